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
    """Runs coro on the loop; the calling (replica) thread waits, the GIL released meanwhile."""
    return asyncio.run_coroutine_threadsafe(coro, loop()).result()


def wait_pool():
    """Threads that wait on handle calls for async code, so that the loop never blocks."""
    global _wait_pool
    if _wait_pool is None:
        with _loop_lock:
            if _wait_pool is None:
                _wait_pool = concurrent.futures.ThreadPoolExecutor(
                    max_workers=32, thread_name_prefix="serve-wait")
    return _wait_pool
