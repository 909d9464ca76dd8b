"""What the runtime and the handles share: the request being served (a context variable, so
that threads and asyncio tasks each see their own) and the asyncio loop of this replica."""

import asyncio
import concurrent.futures
import contextvars
import threading

# The serve._serve request the running handler serves; calls made meanwhile belong to it.
current_request = contextvars.ContextVar("serve_current_request", default=None)

_loop = None
_loop_lock = threading.Lock()
_wait_pool = None


def loop():
    """This replica's asyncio loop, on its own daemon thread, started on first use."""
    global _loop
    if _loop is not None:
        return _loop
    with _loop_lock:
        if _loop is None:
            new = asyncio.new_event_loop()
            ready = threading.Event()

            def run():
                asyncio.set_event_loop(new)
                new.call_soon(ready.set)
                new.run_forever()

            threading.Thread(target=run, name="serve-asyncio", daemon=True).start()
            ready.wait()
            _loop = new
    return _loop


def run_coroutine(coro):
    """Runs coro on the loop as a task in the caller's context (so it sees the request being
    served: calls it makes belong to that request); the calling (replica) thread waits, the GIL
    released meanwhile. A bare lock is the completion signal: cheaper than a
    concurrent.futures.Future's condition variable, which showed in the async echo's cost."""
    lp = loop()
    ctx = contextvars.copy_context()
    done = threading.Lock()
    done.acquire()
    box = []

    def finished(task):
        box.append(task)
        done.release()

    def start():
        try:
            lp.create_task(coro, context=ctx).add_done_callback(finished)
        except BaseException as e:  # noqa: BLE001 - the waiting thread must wake up
            coro.close()
            fut = lp.create_future()
            fut.set_exception(e)
            finished(fut)

    lp.call_soon_threadsafe(start)
    done.acquire()
    return box[0].result()


def wait_pool():
    """Threads that wait on handle calls for async code, so that the loop never blocks."""
    global _wait_pool
    if _wait_pool is None:
        with _loop_lock:
            if _wait_pool is None:
                _wait_pool = concurrent.futures.ThreadPoolExecutor(
                    max_workers=32, thread_name_prefix="serve-wait")
    return _wait_pool
