# For benchmarks/ab_launch.py --a new --patch-a ab_patches/enum_back_s6.py: side A's
# postmaster preloads this, which puts back into its image what bgwlab.parallel.mq's
# `import enum` (MqResult as an enum.Enum) brought: enum, collections, functools,
# operator, reprlib, keyword, types, itertools.  Do not edit: it is the A/B's baseline.
import enum  # noqa: F401
