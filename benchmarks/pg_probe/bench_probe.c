/*-------------------------------------------------------------------------
 *
 * bench_probe.c
 *	  The benchmark's PostgreSQL side: one dynamic background worker per call,
 *	  timed inside the registering backend at the same instants as bgwlab's
 *	  benchmark runner (benchmarks/runner.py, Registrant.timed / fail / crash).
 *
 * bench_trial(kind text, cap_ms float8) -> one row:
 *	 t0		just before RegisterDynamicBackgroundWorker()
 *	 t_pid	WaitForBackgroundWorkerStartup() returned (STARTED + pid, or STOPPED)
 *	 t_run	this backend read the worker's sign-in (it reached its code)
 *	 t_last	the worker's last instruction (its own CLOCK_MONOTONIC stamp)
 *	 t_stop	WaitForBackgroundWorkerShutdown() returned STOPPED
 *	 status	what the waits returned; "kicked" if the postmaster had to be signalled
 *			again (PostgreSQL 15's lost wakeup after a failed fork, see
 *			bgwlab/pg/scenarios.py LOST_WAKEUP)
 *
 * kinds:
 *	 timed	the worker signs in (stamp in a DSM segment, then SetLatch() on this
 *			backend's latch), waits on its own latch for "go",
 *			stamps its last instruction and proc_exit(0)s: start, running, death.
 *	 fail	the same request; the postmaster's fork() is expected to fail (a pids
 *			cgroup at its limit is put around it from outside): request -> STOPPED.
 *	 crash	the entry function does not exist in this library: the worker is forked
 *			and exits(1) in LookupBackgroundWorkerFunction(): request -> STOPPED.
 *
 * CLOCK_MONOTONIC is the clock of bgwlab's event log and runner, so the stamps
 * compare across processes.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <dlfcn.h>
#include <signal.h>
#include <time.h>

#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "postmaster/bgworker.h"
#include "storage/dsm.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/pmsignal.h"
#include "utils/builtins.h"
#include "utils/wait_event.h"

PG_MODULE_MAGIC;

PG_FUNCTION_INFO_V1(bench_trial);

PGDLLEXPORT void bench_worker_main(Datum main_arg);

typedef struct BenchShared
{
	pg_atomic_uint64 signin_ns;		/* 0: not signed in */
	pg_atomic_uint64 last_ns;		/* the worker's last instruction */
	pg_atomic_uint32 go;			/* the registrant says: finish */
	Latch	   *registrant_latch;	/* both in the main shared memory (PGPROC), */
	Latch	   *worker_latch;		/* mapped at the same address everywhere */
} BenchShared;

typedef struct BenchExtra
{
	dsm_handle	handle;
	int32		registrant_pid;
} BenchExtra;

static int64
now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64) ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static const char *
library_path(void)
{
	Dl_info		info;

	if (dladdr((void *) bench_worker_main, &info) == 0 || info.dli_fname == NULL)
		elog(ERROR, "bench_probe: dladdr cannot name this library");
	if (strlen(info.dli_fname) >= BGW_MAXLEN)
		elog(ERROR, "bench_probe: library path \"%s\" is too long", info.dli_fname);
	return info.dli_fname;
}

void
bench_worker_main(Datum main_arg)
{
	int64		t_signin = now_ns();
	BenchExtra	x;
	dsm_segment *seg;
	BenchShared *sh;

	memcpy(&x, MyBgworkerEntry->bgw_extra, sizeof(x));
	seg = dsm_attach(x.handle);
	if (seg == NULL)
		proc_exit(1);
	sh = dsm_segment_address(seg);
	sh->worker_latch = MyLatch;
	pg_memory_barrier();
	pg_atomic_write_u64(&sh->signin_ns, (uint64) t_signin);
	pg_memory_barrier();
	SetLatch(sh->registrant_latch);	/* as a parallel worker wakes its leader */

	BackgroundWorkerUnblockSignals();
	for (;;)
	{
		if (pg_atomic_read_u32(&sh->go) != 0)
			break;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_EXIT_ON_PM_DEATH, -1, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
	pg_atomic_write_u64(&sh->last_ns, (uint64) now_ns());	/* the last instruction */
	proc_exit(0);
}

/* WaitForBackgroundWorkerStartup(), but the postmaster is signalled again after cap_ms. */
static BgwHandleStatus
wait_startup(BackgroundWorkerHandle *handle, pid_t *pid, double cap_ms, bool *kicked)
{
	int64		deadline = now_ns() + (int64) (cap_ms * 1e6);

	*kicked = false;
	for (;;)
	{
		BgwHandleStatus status = GetBackgroundWorkerPid(handle, pid);
		int64		left_ns;
		int			rc;

		if (status == BGWH_STARTED || status == BGWH_STOPPED)
			return status;
		left_ns = deadline - now_ns();
		if (!*kicked && left_ns <= 0)
		{
			*kicked = true;
			SendPostmasterSignal(PMSIGNAL_BACKGROUND_WORKER_CHANGE);
			continue;
		}
		rc = WaitLatch(MyLatch, WL_LATCH_SET | WL_POSTMASTER_DEATH | (*kicked ? 0 : WL_TIMEOUT),
					   *kicked ? -1 : (long) ((left_ns + 999999) / 1000000), PG_WAIT_EXTENSION);
		if (rc & WL_POSTMASTER_DEATH)
			return BGWH_POSTMASTER_DIED;
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
}

static const char *
status_name(BgwHandleStatus s)
{
	switch (s)
	{
		case BGWH_STARTED:
			return "STARTED";
		case BGWH_NOT_YET_STARTED:
			return "NOT_YET_STARTED";
		case BGWH_STOPPED:
			return "STOPPED";
		case BGWH_POSTMASTER_DIED:
			return "POSTMASTER_DIED";
	}
	return "?";
}

Datum
bench_trial(PG_FUNCTION_ARGS)
{
	char	   *kind = text_to_cstring(PG_GETARG_TEXT_PP(0));
	double		cap_ms = PG_GETARG_FLOAT8(1);
	bool		timed = strcmp(kind, "timed") == 0;
	bool		crash = strcmp(kind, "crash") == 0;
	BackgroundWorker worker;
	BackgroundWorkerHandle *handle;
	BenchExtra	x;
	dsm_segment *seg;
	BenchShared *sh;
	BgwHandleStatus st_start,
				st_stop = BGWH_STOPPED;
	pid_t		pid = 0;
	bool		kicked = false;
	int64		t0,
				t_pid,
				t_run = 0,
				t_stop = 0;
	TupleDesc	tupdesc;
	Datum		values[6];
	bool		nulls[6] = {0};
	char		status[128];

	if (!timed && !crash && strcmp(kind, "fail") != 0)
		elog(ERROR, "bench_probe: kind must be timed, fail or crash, not \"%s\"", kind);
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "bench_probe: return type must be a row type");

	seg = dsm_create(sizeof(BenchShared), 0);
	sh = dsm_segment_address(seg);
	pg_atomic_init_u64(&sh->signin_ns, 0);
	pg_atomic_init_u64(&sh->last_ns, 0);
	pg_atomic_init_u32(&sh->go, 0);
	sh->registrant_latch = MyLatch;
	sh->worker_latch = NULL;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS;
	worker.bgw_start_time = BgWorkerStart_ConsistentState;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	strlcpy(worker.bgw_library_name, library_path(), BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, crash ? "bench_no_such_entry" : "bench_worker_main",
			BGW_MAXLEN);
	snprintf(worker.bgw_name, BGW_MAXLEN, "bgwlab bench %s", kind);
	strlcpy(worker.bgw_type, "bgwlab bench", BGW_MAXLEN);
	worker.bgw_notify_pid = MyProcPid;
	memset(&x, 0, sizeof(x));
	x.handle = dsm_segment_handle(seg);
	x.registrant_pid = MyProcPid;
	memcpy(worker.bgw_extra, &x, sizeof(x));

	t0 = now_ns();
	if (!RegisterDynamicBackgroundWorker(&worker, &handle))
		elog(ERROR, "bench_probe: no free worker slot");
	st_start = wait_startup(handle, &pid, cap_ms, &kicked);
	t_pid = now_ns();

	if (timed && st_start == BGWH_STARTED)
	{
		for (;;)				/* the sign-in: the worker reached its code */
		{
			pid_t		p;
			BgwHandleStatus s = GetBackgroundWorkerPid(handle, &p);

			pg_memory_barrier();
			if (pg_atomic_read_u64(&sh->signin_ns) != 0)
			{
				t_run = now_ns();
				break;
			}
			if (s == BGWH_STOPPED)
				break;
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_EXIT_ON_PM_DEATH, -1, PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
			CHECK_FOR_INTERRUPTS();
		}
		pg_atomic_write_u32(&sh->go, 1);
		pg_memory_barrier();
		if (t_run != 0)
			SetLatch(sh->worker_latch);
	}
	if (st_start == BGWH_STARTED)
	{
		st_stop = WaitForBackgroundWorkerShutdown(handle);
		t_stop = now_ns();
	}
	else
		t_stop = t_pid;

	snprintf(status, sizeof(status), "%s/%s%s", status_name(st_start), status_name(st_stop),
			 kicked ? " kicked" : "");
	values[0] = Int64GetDatum(t0);
	values[1] = Int64GetDatum(t_pid);
	values[2] = Int64GetDatum(t_run);
	nulls[2] = (t_run == 0);
	values[3] = Int64GetDatum((int64) pg_atomic_read_u64(&sh->last_ns));
	nulls[3] = (pg_atomic_read_u64(&sh->last_ns) == 0);
	values[4] = Int64GetDatum(t_stop);
	values[5] = CStringGetTextDatum(status);
	pfree(handle);
	dsm_detach(seg);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}
