"""The Celery worker and beat entry point: `celery -A worker worker` and `celery -A worker beat`.

Tasks are thin: they take ids, call one service and commit (STYLE 4). Their names live in utils/jobs.py;
the beat schedule at the bottom uses the same names. Each feature keeps its tasks in its own section.
"""
from celery.signals import worker_process_init

from main import create_app
from utils import jobs
from utils.extensions import db

flask_app = create_app()
celery = flask_app.extensions["celery"]
BEAT_SCHEDULE: dict[str, dict] = {}


@worker_process_init.connect
def _fresh_connections(**_kwargs) -> None:
    """A forked worker process must not share the parent's database connections."""
    with flask_app.app_context():
        db.engine.dispose()


# --- market data (section owner: market data / paper broker) ---------------------------------

# shared_task: registered on every Celery app, so a test's in-process worker runs them too.
from celery import shared_task  # noqa: E402  (each section keeps its imports)


@shared_task(name=jobs.MARKET_TICK)
def market_tick() -> None:
    """Beat: move the simulated feed one step (when it is the source), then match resting paper orders."""
    from utils import market_data
    from utils.brokers import paper
    with market_data.tick_lock() as acquired:
        if not acquired:
            return
        if market_data.source_name() == "simulated":
            market_data.advance_simulated_prices()
            db.session.commit()
        paper.match_resting_orders()
        db.session.commit()


@shared_task(name=jobs.MARKET_MATCH)
def market_match(symbol: str) -> None:
    """After a manual price change: match the resting paper orders of that symbol."""
    from utils.brokers import paper
    paper.match_resting_orders([symbol])
    db.session.commit()


BEAT_SCHEDULE["market-tick"] = {"task": jobs.MARKET_TICK, "schedule": float(flask_app.config["MARKET_TICK_SECONDS"]),
                                "options": {"expires": float(flask_app.config["MARKET_TICK_SECONDS"])}}


# --- orders and trades (section owner: trading core) -----------------------------------------
# shared_task: the tasks register on every Celery app, so a test's in-process worker runs them too.
import logging  # noqa: E402  (each section keeps its imports)

from celery import shared_task  # noqa: E402

from utils import orders as order_service  # noqa: E402
from utils import trades as trade_service  # noqa: E402
from utils.errors import BrokerUnavailable, DomainError  # noqa: E402

ORDER_SEND_MAX_RETRIES = 5
log = logging.getLogger("tradewarden.orders")


# max_retries=None on the task: Celery-unlimited, because the attempt count lives on the order (a retry()
# call's own max_retries=None would fall back to Celery's default of 3 and strand the order in `submitting`).
@shared_task(name=jobs.ORDERS_EXECUTE, bind=True, acks_late=True, max_retries=None)
def execute_order(self, order_id: int, attempt: int | None = None) -> None:
    """Claim the order (committed first, so a crash leaves `submitting` for the recovery sweep), send it,
    record the answer. BrokerUnavailable retries with exponential backoff, then `failed` — unless a send
    may have reached the broker: the claim marks that before each send, so not even a worker killed
    mid-send lets the order be called failed beside a copy at the broker. Any other error is noted on the
    order, which stays `submitting` (in doubt) for the recovery sweep.
    At the paper broker, whose orders live in our database, the three commit together instead, and the task
    then executes the account's other orders still pending (a placement sends no task while one is waiting)."""
    if attempt is None and _executed_with_the_waiting(order_id):
        return
    attempt = order_service.claim_submission(order_id, attempt)
    if attempt is None:
        db.session.commit()
        return
    doubt_before_claim = order_service.note_send_may_arrive(order_id)
    db.session.commit()
    try:
        with order_service.send_turn(order_id):
            answer = order_service.send_claimed(order_id, resend_allowed=attempt <= ORDER_SEND_MAX_RETRIES + 1)
            db.session.commit()  # the broker's side is durable before we record its answer
            if answer is not None:
                order_service.pause_for_fault_injection(order_id)
                order_service.record_answer(order_id, answer)
                db.session.commit()
    except BrokerUnavailable as error:
        db.session.rollback()
        order_service.note_send_failure(order_id, error, doubt_before_claim)
        db.session.commit()
        # Counted on the order (not per Celery message), so a recovery resend cannot restart the count.
        if attempt > ORDER_SEND_MAX_RETRIES:
            order_service.fail_submission(order_id, f"broker unreachable after {attempt} attempts: {error.message}")
            db.session.commit()
            return
        raise self.retry(args=[order_id, attempt], countdown=order_service.retry_delay_seconds(attempt)) from None
    except Exception as error:  # noqa: BLE001 — shown on the order (kept in doubt), then re-raised for the log
        db.session.rollback()
        order_service.note_send_error(order_id, attempt, error)
        db.session.commit()
        raise


# The most pending orders one task executes beside its own; a longer queue is handed to a new task, so the
# accounts behind it in the queue get their turn.
WAITING_ORDERS_PER_TASK = 50


def _executed_with_the_waiting(order_id: int) -> bool:
    """At the paper broker: execute the order, then its account's orders still pending, oldest first, each in a
    transaction of its own (also when the order's own execution failed). False for an order at a remote broker
    (nothing done), and when its own send has to wait (see _executed_in_one_transaction): the path of the
    remote brokers then claims and retries it, the waiting ones executed all the same."""
    connection_id = order_service.paper_connection_id(order_id)
    db.session.commit()
    if connection_id is None:
        return False
    jobs.waiting_task_starts(order_service.waiting_execution_key(connection_id))  # before the pending are read
    try:
        return _executed_in_one_transaction(order_id)
    finally:
        _execute_waiting(connection_id, order_id)


def _execute_waiting(connection_id: int, own_order_id: int) -> None:
    """Execute the connection's pending orders (not `own_order_id`). One that fails is counted on its order and
    logged, and the rest go on; one whose send has to wait is handed to a task of its own."""
    waiting = order_service.pending_order_ids(connection_id, limit=WAITING_ORDERS_PER_TASK + 1)
    db.session.commit()
    for order_id in waiting[:WAITING_ORDERS_PER_TASK]:
        if order_id == own_order_id:
            continue
        try:
            if not _executed_in_one_transaction(order_id):
                jobs.send_now(jobs.ORDERS_EXECUTE, order_id)
        except Exception:  # noqa: BLE001 — counted on the order by _executed_in_one_transaction
            log.exception("order %s: execution failed", order_id)
    if len(waiting) > WAITING_ORDERS_PER_TASK:
        jobs.send_now(jobs.ORDERS_EXECUTE, waiting[WAITING_ORDERS_PER_TASK])


def _executed_in_one_transaction(order_id: int) -> bool:
    """At the paper broker: claim, send and record the answer in one commit. False when the order's broker
    is elsewhere, or when its send has to wait (BrokerUnavailable, e.g. the order it replaces is still being
    sent): that is rolled back, and the path above claims, counts and retries it. Any other error is rolled
    back too and counted on the order, which fails after as many executions as a send has attempts."""
    try:
        done = order_service.execute_in_our_database(order_id)
    except BrokerUnavailable:
        db.session.rollback()
        return False
    except Exception as error:  # noqa: BLE001 — counted on the order, then re-raised for the worker's log
        db.session.rollback()
        order_service.count_execution_error(order_id, error, give_up_after=ORDER_SEND_MAX_RETRIES + 1)
        db.session.commit()
        raise
    if done:
        db.session.commit()
    return done


@shared_task(name=jobs.ORDERS_CANCEL, bind=True, max_retries=ORDER_SEND_MAX_RETRIES, acks_late=True)
def cancel_order(self, order_id: int) -> None:
    """Tell the broker to cancel a `pending_cancel` order and record its answer."""
    try:
        order_service.request_broker_cancel(order_id)
        db.session.commit()
    except BrokerUnavailable:
        db.session.rollback()
        raise self.retry(countdown=2 ** self.request.retries) from None


@shared_task(name=jobs.ORDERS_SYNC)
def sync_orders() -> None:
    """Beat: poll the broker for every open order's fills and status (one scan at a time, Redis lock)."""
    with order_service.sweep_lock("sync") as acquired:
        for order_id in order_service.open_order_ids() if acquired else []:
            try:
                order_service.sync_order(order_id)
                db.session.commit()
            except DomainError as error:
                db.session.rollback()
                order_service.log.warning("sync of order %s failed: %s", order_id, error.message)
            except Exception:  # noqa: BLE001 — one malformed broker answer must not stop the other orders' sync
                db.session.rollback()
                order_service.log.exception("sync of order %s failed", order_id)


@shared_task(name=jobs.ORDERS_RECOVER)
def recover_orders() -> None:
    """Beat: re-enqueue orders stuck in `pending`, resend (after asking the broker) stuck `submitting`, and
    ask again for the cancel of orders stuck in `pending_cancel`."""
    pending, submitting = order_service.stuck_orders()
    for order_id in pending:
        jobs.send_now(jobs.ORDERS_EXECUTE, order_id)
    for order_id, attempt in submitting:
        jobs.send_now(jobs.ORDERS_EXECUTE, order_id, attempt)
    for order_id in order_service.stuck_cancels():
        jobs.send_now(jobs.ORDERS_CANCEL, order_id)


@shared_task(name=jobs.TRADES_SETTLE_EXPIRED)
def settle_expired_options() -> int:
    """Beat: close paper trades in options that have expired, at their settlement value."""
    return trade_service.settle_expired_options(commit=db.session.commit)


@shared_task(name=jobs.POSITIONS_CHECK)
def check_positions() -> dict:
    """Beat: compare each linked broker's positions with the open trades on that link (read only)."""
    from utils import position_check
    return position_check.check_all()


BEAT_SCHEDULE["orders-sync"] = {"task": jobs.ORDERS_SYNC, "schedule": 2.0}
BEAT_SCHEDULE["orders-recover"] = {"task": jobs.ORDERS_RECOVER, "schedule": 15.0}
BEAT_SCHEDULE["trades-settle-expired"] = {"task": jobs.TRADES_SETTLE_EXPIRED, "schedule": 60.0}
BEAT_SCHEDULE["positions-check"] = {"task": jobs.POSITIONS_CHECK,
                                    "schedule": float(flask_app.config["POSITION_CHECK_SECONDS"])}



# --- stop-loss (section owner: stop-loss guard) ----------------------------------------------
# shared_task: registered on every Celery app, so a test's in-process worker runs them too.
from celery import shared_task  # noqa: E402  (each section keeps its imports)

from utils import stoploss  # noqa: E402


@shared_task(name=jobs.STOPLOSS_SWEEP)
def stoploss_sweep() -> dict:
    """Beat: check open trades with a stop or take-profit against one batched quote read; close breaches once."""
    summary = stoploss.sweep(commit=db.session.commit)
    db.session.commit()
    return summary


_STOPLOSS_INTERVAL = float(flask_app.config["STOPLOSS_INTERVAL_SECONDS"])
# expires: a sweep that waited a whole interval in the queue is superseded by the next one.
BEAT_SCHEDULE["stoploss-sweep"] = {"task": jobs.STOPLOSS_SWEEP, "schedule": _STOPLOSS_INTERVAL,
                                   "options": {"expires": max(_STOPLOSS_INTERVAL, 5.0)}}


# --- broker links (section owner: broker linking) --------------------------------------------
from celery import shared_task  # noqa: E402  (each section keeps its imports)


@shared_task(name=jobs.BROKERS_REFRESH)
def refresh_broker_tokens() -> dict:
    """Beat: refresh broker tokens nearing expiry (each under its own lock) and expire stale E*TRADE links."""
    from utils import broker_links
    counts = broker_links.keep_links_alive()
    db.session.commit()
    return counts


BEAT_SCHEDULE["brokers-refresh-tokens"] = {"task": jobs.BROKERS_REFRESH, "schedule": 120.0}


# --- exports (section owner: exports and sharing) --------------------------------------------
# shared_task: registered on every Celery app, so a test's in-process worker runs them too.
from celery import shared_task  # noqa: E402  (each section keeps its imports)

from utils import exports as export_service  # noqa: E402

EXPORTS_CLEANUP_SECONDS = 3600.0


@shared_task(name=jobs.EXPORTS_BUILD, acks_late=True)
def build_export(job_id: int) -> None:
    """Claim a queued export job, build its file into storage (progress committed per batch), commit."""
    if not export_service.claim_job(job_id):
        db.session.rollback()
        return
    db.session.commit()
    try:
        export_service.run_job(job_id, commit=db.session.commit)
        db.session.commit()
    except Exception:
        db.session.rollback()
        export_service.log.exception("export job %s failed", job_id)
        export_service.fail_job(job_id, "The export could not be built.")
        db.session.commit()


@shared_task(name=jobs.EXPORTS_CLEANUP)
def cleanup_exports() -> None:
    """Beat: delete stored export files past their expiry."""
    export_service.delete_expired_files()
    db.session.commit()


BEAT_SCHEDULE["exports-cleanup"] = {"task": jobs.EXPORTS_CLEANUP, "schedule": EXPORTS_CLEANUP_SECONDS,
                                   "options": {"queue": "exports"}}



celery.conf.beat_schedule = BEAT_SCHEDULE
