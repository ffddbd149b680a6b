/*
 * The postmaster's fork path in C: fork(), publish the pid, signal the registrant.
 *
 * The readable reference is Python: Postmaster.start_worker in bgwlab/postmaster.py, the
 * branch taken when this module is not loaded (Cluster.start(fork_path="python")).  This
 * file does the same steps, in the same order, before any Python runs in the parent
 * after fork(); bgwlab/forkpath.py says why, builds it and loads it.
 *
 * fork_publish_notify(pids, word, pidfd, signum) -> (pid, t_forked_ns, t_notified_ns)
 *
 *   pids    the shared segment's int32 view (Segment._i32), writable
 *   word    the index of the worker slot's pid field in that view
 *   pidfd   the registrant's pidfd (validated by the caller), or -1: nobody to signal
 *   signum  the notification signal (SIGUSR1)
 *
 * Postmaster only; the caller has blocked its signals across the call (start_worker).
 * In the child it returns (0, 0, 0) after PyOS_AfterFork_Child(), as os.fork() does;
 * the child then runs worker.child_main.  In the parent: t_notified_ns is 0 when pidfd
 * is -1 and -1 when the signal could not be sent (the caller then logs why).  A failed
 * fork() raises OSError with its errno, as os.fork() does, and publishes nothing.
 *
 * What os.fork() does is kept: the "os.fork" audit event, PyOS_BeforeFork() (the
 * interpreter's at-fork "before" hooks, the import lock), PyOS_AfterFork_Child() in the
 * child.  Only the parent's PyOS_AfterFork_Parent() (the "after_in_parent" hooks, the
 * import lock released) moves: after the signal instead of before the pid is published.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <sched.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424 /* the same number on every Linux architecture */
#endif

static long long
monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* time.monotonic_ns()'s clock */
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static PyObject *
fork_publish_notify(PyObject *self, PyObject *args)
{
    PyObject *view;
    Py_ssize_t word;
    int pidfd, signum;
    Py_buffer buf;

    if (!PyArg_ParseTuple(args, "Onii", &view, &word, &pidfd, &signum))
        return NULL;
    if (PyObject_GetBuffer(view, &buf, PyBUF_WRITABLE | PyBUF_FORMAT | PyBUF_ND) < 0)
        return NULL;
    /* Checked before fork(): bad arguments fork nothing. */
    if (buf.itemsize != 4 || buf.format == NULL || strcmp(buf.format, "i") != 0) {
        PyBuffer_Release(&buf);
        PyErr_SetString(PyExc_TypeError, "pids must be a writable int32 ('i') buffer");
        return NULL;
    }
    if (word < 0 || word >= buf.len / 4) {
        PyBuffer_Release(&buf);
        PyErr_Format(PyExc_IndexError, "pid word %zd outside the %zd-word view", word, buf.len / 4);
        return NULL;
    }
    int32_t *pid_field = (int32_t *)buf.buf + word;

    if (PySys_Audit("os.fork", NULL) < 0) {
        PyBuffer_Release(&buf);
        return NULL;
    }
    PyOS_BeforeFork();
    pid_t pid = fork();
    if (pid == 0) {
        PyOS_AfterFork_Child();
        PyBuffer_Release(&buf);
        return Py_BuildValue("(iLL)", 0, 0LL, 0LL);
    }
    if (pid < 0) {
        int saved = errno;
        PyOS_AfterFork_Parent();
        PyBuffer_Release(&buf);
        errno = saved;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    long long t_forked = monotonic_ns();
    /*
     * Publish the pid: the slot's pid word goes from -1 (not yet started) to the child's
     * pid.  The postmaster is this word's only writer while the slot is in use (the
     * protocol on the layout, bgwlab/shmem.py).  One aligned 4-byte store, as the
     * Python path's memoryview store; release order so that a registrant that reads the
     * pid also reads every earlier store of ours.  The signal below is a system call,
     * which orders it before the registrant's wakeup in any case.
     */
    __atomic_store_n(pid_field, (int32_t)pid, __ATOMIC_RELEASE);
    long long t_notified = 0;
    if (pidfd >= 0) {
        t_notified = monotonic_ns();
        if (syscall(SYS_pidfd_send_signal, pidfd, signum, NULL, 0) < 0)
            t_notified = -1; /* the registrant is gone: the caller forgets it and logs why */
        /* Give the CPU away once, as the Python path does: the registrant just woken is
         * often queued on our CPU, behind what we still do. */
        sched_yield();
    }
    PyOS_AfterFork_Parent();
    PyBuffer_Release(&buf);
    return Py_BuildValue("(iLL)", (int)pid, t_forked, t_notified);
}

static PyMethodDef methods[] = {
    {"fork_publish_notify", fork_publish_notify, METH_VARARGS,
     "fork_publish_notify(pids, word, pidfd, signum) -> (pid, t_forked_ns, t_notified_ns)\n\n"
     "fork(); in the parent, store the pid at pids[word], send signum through pidfd (-1: "
     "none) and yield the CPU once, then run the interpreter's after-fork hooks.  The "
     "child gets (0, 0, 0).  Postmaster only (bgwlab/_forkpath.c)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_bgwlab_forkpath",
    "The postmaster's fork path in C (bgwlab/_forkpath.c, built by bgwlab/forkpath.py).",
    -1, methods,
};

PyMODINIT_FUNC
PyInit__bgwlab_forkpath(void)
{
    return PyModule_Create(&module);
}
