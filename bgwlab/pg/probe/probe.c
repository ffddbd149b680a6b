/*-------------------------------------------------------------------------
 *
 * probe.c
 *	  bgwlab's measuring probe: PostgreSQL's dynamic background workers,
 *	  timed from inside the registering backend.
 *
 * The seed's question, asked of the real server: a backend asks the postmaster
 * for a worker; how long until it knows whether the worker reached its code?
 * Every trial runs in this backend -- register, wait, record, clean up -- and
 * is timed with CLOCK_MONOTONIC here, so no client round trip is measured.  One
 * SQL call runs many trials and returns one row per trial.
 *
 * The waiting strategies are those of bgwlab.lab.strategies:
 *
 *	notify		bgw_notify_pid = MyProcPid; WaitForBackgroundWorkerStartup()
 *				(STARTED means forked), then wait on our latch until the
 *				worker signs in (started) or the handle reads STOPPED
 *				without a sign-in (failed).
 *	timeout		no notification: look for the sign-in every poll_ms until
 *				timeout_ms have passed (timed_out) -- "wait 5 s and give up".
 *	poll_pid	no notification: GetBackgroundWorkerPid() and the sign-in
 *				every poll_ms; verdict rule as for notify.
 *
 * The "sign-in" is the first thing the worker does in user code: it stores
 * its CLOCK_MONOTONIC time in a dynamic shared memory segment that the
 * registrant created for the call, and (for notify) sets the registrant's
 * latch by sending it SIGUSR1 (procsignal_sigusr1_handler sets MyLatch) --
 * the way a parallel worker wakes its leader when it attaches to its queue.
 * A sign-in seen after the worker is gone is the ground truth of a trial:
 * did the worker reach user code?
 *
 * Faults: the probe injects none.  A fork failure is made genuine from outside
 * (the postmaster in a pids cgroup at its limit, bgwlab.pg.cgroup); an early
 * crash is a worker whose entry function does not exist in this library, so
 * the forked worker fails in LookupBackgroundWorkerFunction() and exits(1)
 * before any user code runs.
 *
 * The library is loaded by absolute path, and a worker's bgw_library_name is
 * that same absolute path (expand_dynamic_library_name() takes a name with a
 * slash as is), found with dladdr() on our own entry point.
 *
 * Copyright: bgwlab developers; written against PostgreSQL 15's
 * src/backend/postmaster/bgworker.c and src/test/modules/worker_spi.
 *
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
#include "utils/tuplestore.h"
#include "utils/wait_event.h"

PG_MODULE_MAGIC;

PG_FUNCTION_INFO_V1(probe_trials);
PG_FUNCTION_INFO_V1(probe_hold);
PG_FUNCTION_INFO_V1(probe_library);

PGDLLEXPORT void probe_worker_main(Datum main_arg);

/* Shared with the workers of one SQL call (a DSM segment). */
typedef struct ProbeShared
{
	int			ntrials;
	pg_atomic_uint64 signin_ns[FLEXIBLE_ARRAY_MEMBER];	/* 0: not signed in */
} ProbeShared;

/* What a worker finds in bgw_extra (128 bytes; this is 16). */
typedef struct ProbeExtra
{
	dsm_handle	handle;			/* DSM_HANDLE_INVALID: nowhere to sign in */
	int32		trial;
	int32		run_ms;			/* how long to run after signing in */
	int32		signal_pid;		/* SIGUSR1 this backend at sign-in; 0: none */
} ProbeExtra;

static int64
now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64) ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* The absolute path this library was loaded from. */
static const char *
probe_library_path(void)
{
	Dl_info		info;

	if (dladdr((void *) probe_worker_main, &info) == 0 || info.dli_fname == NULL)
		elog(ERROR, "probe: dladdr cannot name this library");
	if (strlen(info.dli_fname) >= BGW_MAXLEN)
		elog(ERROR, "probe: library path \"%s\" is longer than bgw_library_name (%d bytes)",
			 info.dli_fname, BGW_MAXLEN - 1);
	return info.dli_fname;
}

/*
 * Worker entry point.  Signals are blocked on entry (BackgroundWorkerMain);
 * the sign-in is stamped before anything else.
 */
void
probe_worker_main(Datum main_arg)
{
	int64		t_signin = now_ns();
	ProbeExtra	x;

	memcpy(&x, MyBgworkerEntry->bgw_extra, sizeof(x));

	if (x.handle != DSM_HANDLE_INVALID)
	{
		/* No resource owner here: the mapping lasts until we exit. */
		dsm_segment *seg = dsm_attach(x.handle);

		if (seg != NULL)
		{
			ProbeShared *sh = dsm_segment_address(seg);

			if (x.trial >= 0 && x.trial < sh->ntrials)
				pg_atomic_write_u64(&sh->signin_ns[x.trial], (uint64) t_signin);
			pg_memory_barrier();
			if (x.signal_pid > 0)
				kill(x.signal_pid, SIGUSR1);	/* sets the registrant's latch */
		}
	}

	/* Default handlers: SIGTERM -> bgworker_die() -> exit 1. */
	BackgroundWorkerUnblockSignals();

	while (x.run_ms > 0)
	{
		int64		left_ms = (t_signin + (int64) x.run_ms * 1000000 - now_ns()) / 1000000;

		if (left_ms <= 0)
			break;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 left_ms, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
	proc_exit(0);				/* exit 0: unregistered, never restarted */
}

/* Register one worker; false if no slot was free. */
static bool
register_worker(const char *name, dsm_segment *seg, int trial, int run_ms,
				bool notify, bool sign_in_signal, bool missing_entry,
				BackgroundWorkerHandle **handle)
{
	BackgroundWorker worker;
	ProbeExtra	x;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS;
	worker.bgw_start_time = BgWorkerStart_ConsistentState;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	strlcpy(worker.bgw_library_name, probe_library_path(), BGW_MAXLEN);
	strlcpy(worker.bgw_function_name,
			missing_entry ? "probe_no_such_entry" : "probe_worker_main", BGW_MAXLEN);
	snprintf(worker.bgw_name, BGW_MAXLEN, "%s %d", name, trial);
	strlcpy(worker.bgw_type, "bgwlab probe", BGW_MAXLEN);
	worker.bgw_main_arg = Int32GetDatum(trial);
	worker.bgw_notify_pid = notify ? MyProcPid : 0;

	memset(&x, 0, sizeof(x));
	x.handle = seg ? dsm_segment_handle(seg) : DSM_HANDLE_INVALID;
	x.trial = trial;
	x.run_ms = run_ms;
	x.signal_pid = sign_in_signal ? MyProcPid : 0;
	memcpy(worker.bgw_extra, &x, sizeof(x));

	return RegisterDynamicBackgroundWorker(&worker, handle);
}

/* Sleep up to ms milliseconds on our latch (woken early by SIGUSR1 if wake). */
static void
nap(double ms, bool wake)
{
	long		t = (long) ms;

	if (t < 1)
		t = 1;
	(void) WaitLatch(MyLatch, (wake ? WL_LATCH_SET : 0) | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					 t, PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
	CHECK_FOR_INTERRUPTS();
}

/*
 * WaitForBackgroundWorkerStartup() with a cap: the same loop (status, then
 * sleep on the latch until the postmaster signals), but after cap_ms the
 * postmaster is signalled again (PMSIGNAL_BACKGROUND_WORKER_CHANGE), once, so
 * that a lost wakeup in its loop costs cap_ms instead of its 60 s select()
 * timeout.  *kicked says whether that was needed.
 */
static BgwHandleStatus
wait_startup_capped(BackgroundWorkerHandle *handle, pid_t *pid, double cap_ms, bool *kicked)
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
		/* sleep until the deadline (rounded up: never kick early) or a signal */
		rc = WaitLatch(MyLatch, WL_LATCH_SET | WL_POSTMASTER_DEATH | (*kicked ? 0 : WL_TIMEOUT),
					   *kicked ? -1 : (long) ((left_ns + 999999) / 1000000), PG_WAIT_EXTENSION);
		if (rc & WL_POSTMASTER_DEATH)
			return BGWH_POSTMASTER_DIED;
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
}

/*
 * probe_trials(strategy, trials, timeout_ms, poll_ms, run_ms, missing_entry,
 *				gap_ms, cap_ms) -> one row per trial.
 *
 * time_to_verdict_ms runs from just before RegisterDynamicBackgroundWorker()
 * to the verdict.  After each verdict the worker is terminated and waited for
 * (not timed; see below), so that the next trial finds a free slot and the
 * sign-in read afterwards is final (reached_user_code: the ground truth).
 */
Datum
probe_trials(PG_FUNCTION_ARGS)
{
	char	   *strategy = text_to_cstring(PG_GETARG_TEXT_PP(0));
	int			ntrials = PG_GETARG_INT32(1);
	double		timeout_ms = PG_GETARG_FLOAT8(2);
	double		poll_ms = PG_GETARG_FLOAT8(3);
	int			run_ms = PG_GETARG_INT32(4);
	bool		missing_entry = PG_GETARG_BOOL(5);
	double		gap_ms = PG_GETARG_FLOAT8(6);
	double		cap_ms = PG_GETARG_FLOAT8(7);
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	bool		notify = strcmp(strategy, "notify") == 0;
	bool		timeout = strcmp(strategy, "timeout") == 0;
	bool		poll_pid = strcmp(strategy, "poll_pid") == 0;
	dsm_segment *seg;
	ProbeShared *sh;

	if (!notify && !timeout && !poll_pid)
		elog(ERROR, "probe: strategy must be notify, timeout or poll_pid, not \"%s\"", strategy);
	if (ntrials < 1 || ntrials > 100000)
		elog(ERROR, "probe: trials must be 1 .. 100000");
	if (poll_ms <= 0)
		poll_ms = 1;

	InitMaterializedSRF(fcinfo, 0);

	seg = dsm_create(offsetof(ProbeShared, signin_ns) + sizeof(pg_atomic_uint64) * ntrials, 0);
	sh = dsm_segment_address(seg);
	sh->ntrials = ntrials;
	for (int i = 0; i < ntrials; i++)
		pg_atomic_init_u64(&sh->signin_ns[i], 0);

	for (int i = 0; i < ntrials; i++)
	{
		BackgroundWorkerHandle *handle;
		BgwHandleStatus status = BGWH_NOT_YET_STARTED;
		pid_t		pid = 0;
		const char *verdict = NULL;
		const char *why = "";
		bool		kicked = false;
		int64		t0,
					t1 = 0,
					signin;
		Datum		values[10];
		bool		nulls[10] = {0};

		if (i > 0 && gap_ms > 0)
			nap(gap_ms, false);

		t0 = now_ns();
		if (!register_worker("bgwlab probe trial", seg, i, run_ms, notify, notify,
							 missing_entry, &handle))
		{
			t1 = now_ns();
			verdict = "failed";
			why = "no free worker slot";
			handle = NULL;
		}
		else if (notify)
		{
			if (cap_ms > 0)
				status = wait_startup_capped(handle, &pid, cap_ms, &kicked);
			else
				status = WaitForBackgroundWorkerStartup(handle, &pid);
			if (status == BGWH_STOPPED)
				why = "STOPPED at startup";
			else if (status == BGWH_POSTMASTER_DIED)
				why = "postmaster died";
			/* STARTED = forked: wait for the sign-in or the exit */
			while (status == BGWH_STARTED)
			{
				pid_t		p;

				status = GetBackgroundWorkerPid(handle, &p);	/* status first ... */
				pg_memory_barrier();
				if (pg_atomic_read_u64(&sh->signin_ns[i]) != 0) /* ... then sign-in */
				{
					verdict = "started";
					break;
				}
				if (status == BGWH_STOPPED)
				{
					why = "exited before user code";
					break;
				}
				nap(60000, true);
			}
			if (verdict == NULL)
				verdict = "failed";
		}
		else if (timeout)
		{
			for (;;)
			{
				double		waited = (now_ns() - t0) / 1e6;

				if (pg_atomic_read_u64(&sh->signin_ns[i]) != 0)
				{
					verdict = "started";
					break;
				}
				if (waited >= timeout_ms)
				{
					verdict = "timed_out";
					break;
				}
				nap(Min(poll_ms, timeout_ms - waited), false);
			}
		}
		else					/* poll_pid */
		{
			for (;;)
			{
				status = GetBackgroundWorkerPid(handle, &pid);
				pg_memory_barrier();
				if (pg_atomic_read_u64(&sh->signin_ns[i]) != 0)
				{
					verdict = "started";
					break;
				}
				if (status == BGWH_STOPPED)
				{
					verdict = "failed";
					why = "STOPPED without sign-in";
					break;
				}
				nap(poll_ms, false);
			}
		}
		if (handle != NULL)
			t1 = now_ns();		/* the verdict */

		/*
		 * Clean up, untimed.  Let the worker end by itself first (it runs run_ms
		 * after signing in), so that a worker the strategy gave up on still gets
		 * the chance to reach user code: that is what makes a timeout spurious.
		 * Whatever is still there after 5 s (a start the postmaster has not
		 * acted on) is terminated, and waited for.
		 */
		if (handle != NULL)
		{
			pid_t		p;
			int64		give_up = now_ns() + (int64) 5 * 1000000000;
			bool		terminated = false;

			while (GetBackgroundWorkerPid(handle, &p) != BGWH_STOPPED)
			{
				if (now_ns() > give_up)
				{
					if (terminated)
						elog(ERROR, "probe: trial %d's worker did not stop within 120 s", i);
					TerminateBackgroundWorker(handle);
					terminated = true;
					give_up = now_ns() + (int64) 120 * 1000000000;
				}
				nap(1, notify);
			}
			pfree(handle);
		}
		signin = (int64) pg_atomic_read_u64(&sh->signin_ns[i]);

		values[0] = Int32GetDatum(i);
		values[1] = CStringGetTextDatum(verdict);
		values[2] = Float8GetDatum((t1 - t0) / 1e6);
		values[3] = BoolGetDatum(signin != 0);
		values[4] = CStringGetTextDatum(why);
		values[5] = Int32GetDatum((int32) pid);
		nulls[5] = (pid <= 0);
		values[6] = Float8GetDatum((signin - t0) / 1e6);
		nulls[6] = (signin == 0);
		values[7] = Int64GetDatum(t0);
		values[8] = Int64GetDatum(t1);
		values[9] = BoolGetDatum(kicked);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}

	dsm_detach(seg);
	return (Datum) 0;
}

/*
 * probe_hold(run_ms) -> pid: start a worker named "bgwlab probe hold 0" and
 * wait for it to end (WaitForBackgroundWorkerShutdown).  A test kills the
 * worker with SIGKILL meanwhile, to show that PostgreSQL's crash-restart
 * takes this backend -- the registrant -- down with it.
 */
Datum
probe_hold(PG_FUNCTION_ARGS)
{
	int			run_ms = PG_GETARG_INT32(0);
	BackgroundWorkerHandle *handle;
	pid_t		pid = 0;

	if (!register_worker("bgwlab probe hold", NULL, 0, run_ms, true, false, false, &handle))
		elog(ERROR, "probe: no free worker slot");
	if (WaitForBackgroundWorkerStartup(handle, &pid) != BGWH_STARTED)
		elog(ERROR, "probe: the hold worker did not start");
	(void) WaitForBackgroundWorkerShutdown(handle);
	PG_RETURN_INT32((int32) pid);
}

/* probe_library() -> the absolute path workers are told to load. */
Datum
probe_library(PG_FUNCTION_ARGS)
{
	PG_RETURN_TEXT_P(cstring_to_text(probe_library_path()));
}
