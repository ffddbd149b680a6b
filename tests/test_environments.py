"""The environments that run bgwlab without a Linux laptop: `.devcontainer/` (VS Code,
Codespaces) and `binder/` (repo2docker, mybinder.org).

Neither can be started here (no container runtime), so these check what can be checked
offline: that the files parse, follow the tools' documented conventions, and agree with
the rest of the project (pyproject.toml's Python and extras, the Makefile's targets and
venv, the notebooks' kernel).
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parent.parent
DEVCONTAINER = ROOT / ".devcontainer" / "devcontainer.json"
BINDER = ROOT / "binder"
POSTBUILD = BINDER / "postBuild"

# Debian policy: package names are lower case letters, digits, + - and ., at least two
# characters, starting with a letter or digit.
DEBIAN_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]+")


# ---------------------------------------------------------------------------- helpers

def strip_jsonc_comments(text: str) -> str:
    """`text` without its // and /* */ comments; the same inside a JSON string are kept.

    devcontainer.json is JSONC: comments are allowed (trailing commas are not, so plain
    json.loads of the result must succeed).  Newlines inside comments are kept, so that
    a parse error still names the right line.
    """
    out = []
    i, n = 0, len(text)
    in_string = False
    while i < n:
        c = text[i]
        if in_string:
            if c == "\\" and i + 1 < n:
                out.append(text[i:i + 2])
                i += 2
                continue
            if c == '"':
                in_string = False
            out.append(c)
            i += 1
        elif c == '"':
            in_string = True
            out.append(c)
            i += 1
        elif text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end == -1 else end
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            if end == -1:
                raise ValueError(f"unterminated /* comment at offset {i}")
            out.append(" " + "\n" * text.count("\n", i, end))
            i = end + 2
        else:
            out.append(c)
            i += 1
    if in_string:
        raise ValueError("unterminated string")
    return "".join(out)


def load_devcontainer() -> dict:
    return json.loads(strip_jsonc_comments(DEVCONTAINER.read_text()))


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def makefile() -> str:
    return (ROOT / "Makefile").read_text()


def make_variable(name: str) -> str:
    m = re.search(rf"^{name}\s*[?:]?=[ \t]*(.*)$", makefile(), re.M)
    assert m, f"Makefile sets no {name}"
    return m.group(1).strip()


def postbuild_logical_lines() -> list[str]:
    """postBuild's commands, continuation lines joined, comments and blank lines dropped."""
    text = POSTBUILD.read_text().replace("\\\n", " ")
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def apt_packages() -> list[str]:
    """binder/apt.txt read as repo2docker reads it: '#' starts a comment, blank lines skipped."""
    names = []
    for line in (BINDER / "apt.txt").read_text().splitlines():
        name = line.partition("#")[0].strip()
        if name:
            names.append(name)
    return names


def python_version_ok(version: str) -> bool:
    return SpecifierSet(pyproject()["project"]["requires-python"]).contains(version)


# ------------------------------------------------------------------------------ JSONC

def test_jsonc_stripper_keeps_strings_and_drops_comments():
    text = '''// leading comment
{
  "url": "https://example.org//x", /* a block
  comment over two lines */ "glob": "a/*b*/c",
  "quote": "say \\"// not a comment\\"", // trailing
  "n": 1
}'''
    assert json.loads(strip_jsonc_comments(text)) == {
        "url": "https://example.org//x", "glob": "a/*b*/c",
        "quote": 'say "// not a comment"', "n": 1}
    with pytest.raises(ValueError):
        strip_jsonc_comments('{"a": 1} /* never closed')


# ------------------------------------------------------------------------ devcontainer

def test_devcontainer_parses_as_jsonc_with_the_keys_it_relies_on():
    conf = load_devcontainer()
    for key in ("name", "image", "postCreateCommand", "forwardPorts", "portsAttributes",
                "customizations", "remoteUser"):
        assert key in conf, f"devcontainer.json has no {key!r}"
    extensions = conf["customizations"]["vscode"]["extensions"]
    assert {"ms-python.python", "ms-toolsai.jupyter"} <= set(extensions)
    # The image's non-root user: lifecycle commands and terminals run as it.
    assert conf["remoteUser"] == "vscode"


def test_devcontainer_image_is_debian_bookworm_with_a_python_that_pyproject_accepts():
    image = load_devcontainer()["image"]
    m = re.fullmatch(r"mcr\.microsoft\.com/devcontainers/python:(?:\d+-)?(\d+\.\d+)-bookworm",
                     image)
    assert m, f"not a Debian 12 (bookworm) devcontainers Python image: {image}"
    assert m.group(1) == "3.11", image
    assert python_version_ok(m.group(1)), (image, pyproject()["project"]["requires-python"])


def test_devcontainer_post_create_runs_an_existing_make_target():
    command = load_devcontainer()["postCreateCommand"]
    assert isinstance(command, str), "a string runs through /bin/sh, like a terminal"
    words = shlex.split(command)
    assert words[0] == "make", command
    targets = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
    assert targets, f"{command!r} names no target"
    rules = set(re.findall(r"^([A-Za-z0-9_.-]+)[ \t]*:(?!=)", makefile(), re.M))
    for target in targets:
        assert target in rules, f"Makefile has no rule for {target!r}"


def test_devcontainer_interpreter_is_the_makefile_venv():
    settings = load_devcontainer()["customizations"]["vscode"]["settings"]
    path = settings["python.defaultInterpreterPath"]
    assert path == "${containerWorkspaceFolder}/" + make_variable("VENV") + "/bin/python"


def test_devcontainer_forwards_the_port_make_lab_serves():
    conf = load_devcontainer()
    assert 8888 in conf["forwardPorts"]
    assert conf["portsAttributes"]["8888"]["label"]
    # `make lab` leaves Jupyter on its default port, 8888, unless LAB_ARGS says otherwise.
    assert "--port" not in make_variable("LAB_ARGS")
    recipe = re.search(r"^lab:.*\n((?:\t.*\n?)+)", makefile(), re.M)
    assert recipe and "jupyter lab" in recipe.group(1)
    assert "--port" not in recipe.group(1)


def test_platform_messages_point_to_the_devcontainer_that_exists():
    from bgwlab import platform_check
    for name in ("MACOS", "WINDOWS", "OTHER", "OLD_PYTHON"):
        assert ".devcontainer/" in getattr(platform_check, name), name
    assert DEVCONTAINER.is_file()


# ------------------------------------------------------------------------------ binder

def test_binder_uses_the_files_it_documents():
    # A Dockerfile would make repo2docker ignore apt.txt and postBuild; an environment.yml
    # would make it ignore runtime.txt; binder/ and .binder/ together are refused.
    assert not (BINDER / "Dockerfile").exists()
    assert not (BINDER / "environment.yml").exists()
    assert not (ROOT / ".binder").exists()
    for name in ("apt.txt", "postBuild", "runtime.txt"):
        assert (BINDER / name).is_file(), name


def test_binder_runtime_is_python_3_11():
    runtime = (BINDER / "runtime.txt").read_text().strip()
    assert runtime == "python-3.11"
    assert python_version_ok(runtime.removeprefix("python-"))


def test_postbuild_is_an_executable_bash_script():
    assert os.stat(POSTBUILD).st_mode & 0o111 == 0o111, "postBuild must be mode 755"
    tracked = subprocess.run(["git", "ls-files", "-s", "binder/postBuild"], cwd=ROOT,
                             capture_output=True, text=True)
    if tracked.returncode == 0 and tracked.stdout.strip():
        assert tracked.stdout.split()[0] == "100755", tracked.stdout
    first = POSTBUILD.read_text().splitlines()[0]
    assert re.fullmatch(r"#!\s*(/usr)?/bin/(env\s+)?bash", first), first
    lines = postbuild_logical_lines()
    # repo2docker does not stop the build on an error unless the script says so.
    assert re.match(r"set\s+-\w*e", lines[0]), lines[0]
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash here")
    r = subprocess.run([bash, "-n", str(POSTBUILD)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_postbuild_passes_shellcheck():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed")
    r = subprocess.run([shellcheck, "-s", "bash", str(POSTBUILD)], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_postbuild_installs_the_project_with_extras_that_exist():
    text = " ".join(postbuild_logical_lines())
    installs = re.findall(r"pip install [^;&|]*?(?:-e|--editable)\s+['\"]?\.\[([^\]]*)\]", text)
    assert installs, "postBuild does not pip install the project editable"
    known = set(pyproject()["project"]["optional-dependencies"])
    for extras in installs:
        for extra in (e.strip() for e in extras.split(",")):
            assert extra in known, f"pyproject.toml has no extra {extra!r} (has {sorted(known)})"


def test_postbuild_kernel_is_the_one_the_notebooks_ask_for():
    text = " ".join(postbuild_logical_lines())
    m = re.search(r"ipykernel install [^;&|]*--name[ =](\S+)", text)
    assert m, "postBuild installs no kernel"
    kernel = m.group(1).strip("'\"")
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert notebooks
    for nb in notebooks:
        spec = json.loads(nb.read_text()).get("metadata", {}).get("kernelspec", {})
        assert spec.get("name") == kernel, (nb.name, spec)


def test_postbuild_builds_the_kernel_from_a_python_that_apt_txt_installs():
    text = " ".join(postbuild_logical_lines())
    m = re.search(r"(/usr/bin/python3)\s+-m\s+venv\s", text)
    assert m, "postBuild does not make its venv from the distribution's python3"
    assert {"python3", "python3-venv"} <= set(apt_packages())


def test_apt_txt_lists_valid_debian_package_names():
    names = apt_packages()
    assert names
    assert len(names) == len(set(names)), names
    for name in names:
        assert DEBIAN_PACKAGE.fullmatch(name), f"not a Debian package name: {name!r}"


def test_apt_txt_packages_exist_in_this_machines_debian():
    """Checked against this machine's apt lists (Debian 12 here); repo2docker installs them
    on its own base image (Ubuntu), where these names exist too."""
    apt_cache = shutil.which("apt-cache")
    if apt_cache is None:
        pytest.skip("apt-cache is missing")
    if not list(Path("/var/lib/apt/lists").glob("*_Packages*")):
        pytest.skip("no apt package lists: run apt-get update")
    for name in apt_packages():
        r = subprocess.run([apt_cache, "show", "--no-all-versions", name],
                           capture_output=True, text=True)
        assert r.returncode == 0 and f"Package: {name}" in r.stdout, \
            f"{name}: not in this machine's apt sources ({r.stderr.strip()})"
