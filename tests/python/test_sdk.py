"""The Python SDK against a real local stack."""

import asyncio
import io
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import jobs
from conftest import metric
from runhouse_gateway import DispatchCancelled, Gateway, GatewayError, RemoteError


def test_a_remote_call_returns_the_result(gw):
    add = gw.function(jobs.add).to("local")
    assert add(2, 3) == 5
    assert gw.function(jobs.echo).to("local")({"nested": [1, 2, None]}) == {"nested": [1, 2, None]}


def test_a_remote_exception_is_raised_with_its_type_and_traceback(gw):
    boom = gw.function(jobs.boom).to("local")
    with pytest.raises(RemoteError) as caught:
        boom()
    err = caught.value
    assert err.remote_type == "KeyError"
    assert "missing-key" in err.message
    assert "jobs.py" in err.remote_traceback and "in boom" in err.remote_traceback
    text = str(err)
    assert "KeyError" in text and "missing-key" in text and "Traceback" in text


def test_output_is_streamed_while_the_call_runs(gw, capsys):
    ticker = gw.function(jobs.ticker).to("local")
    handle = ticker.dispatch(4, 0.3)
    first_seen = None
    texts = []
    for entry in handle.logs(follow=True):
        texts.append(entry["text"])
        if first_seen is None:
            first_seen = handle.status()
    assert first_seen == "running", "the first line arrived only after the call ended"
    assert "".join(texts) == "".join(f"tick {i}\n" for i in range(4))
    greet = gw.function(jobs.greet).to("local")
    assert greet("ada", punctuation="?") == "hi ada?"
    out = capsys.readouterr()
    assert "hello ada" in out.out and "warning on stderr" in out.err


def test_cancel_from_another_thread_stops_the_call(gw):
    sleepy = gw.function(jobs.sleepy).to("local")
    handle = sleepy.dispatch(600)
    outcome = {}

    def wait():
        try:
            handle.result()
        except DispatchCancelled as err:
            outcome["err"] = err

    waiter = threading.Thread(target=wait)
    waiter.start()
    while handle.status() != "running":
        time.sleep(0.05)
    handle.cancel(reason="from another thread")
    waiter.join(timeout=30)
    assert not waiter.is_alive()
    assert outcome["err"].reason == "from another thread"
    assert handle.status() == "cancelled"


def test_ctrl_c_in_a_blocking_call_cancels_the_remote_run(stack):
    script = (
        "import sys; sys.path.insert(0, %r)\n"
        "import jobs\n"
        "from runhouse_gateway import Gateway\n"
        "gw = Gateway()\n"
        "f = gw.function(jobs.sleepy).to('local')\n"
        "try:\n"
        "    f.dispatch  # warm\n"
        "    print('calling', flush=True)\n"
        "    f(600, labels={'suite': 'sigint'})\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', flush=True)\n"
        "    sys.exit(130)\n"
    ) % os.path.join(os.path.dirname(__file__), "project")
    env = dict(os.environ, RH_GATEWAY_URL=stack["url"], RH_TOKEN=stack["token"])
    child = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
    gw = Gateway(stack["url"], stack["token"])
    deadline = time.time() + 30
    while not gw.dispatches(state="running", labels={"suite": "sigint"}):
        assert time.time() < deadline, "the call never started"
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    out, _ = child.communicate(timeout=30)
    assert child.returncode == 130 and "interrupted" in out
    handle = gw.dispatches(labels={"suite": "sigint"})[0]
    assert handle.wait(timeout=30)["state"] == "cancelled"


def test_deploying_unchanged_code_skips_the_upload(gw, stack):
    gw.function(jobs.add).to("local")
    before = metric(stack, "rh_bundles")
    spec = gw.function(jobs.add)
    started = time.perf_counter()
    spec.to("local")
    elapsed = time.perf_counter() - started
    assert spec.uploaded is False
    assert metric(stack, "rh_bundles") == before
    print(f"unchanged-code .to(): {elapsed * 1000:.1f} ms")


def test_eight_threads_call_concurrently(gw):
    add = gw.function(jobs.add).to("local")
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: add(i, i), range(32)))
    assert results == [2 * i for i in range(32)]


def test_the_async_api(gw):
    add = gw.function(jobs.add).to("local")

    async def main():
        direct = await asyncio.gather(*(add.acall(i, 1) for i in range(4)))
        handle = add.dispatch(20, 22)
        return direct, await handle.await_result()

    direct, later = asyncio.run(main())
    assert direct == [1, 2, 3, 4]
    assert later == 42


def test_a_create_retried_after_a_dropped_connection_yields_one_dispatch(gw, stack):
    # A proxy that forwards the first request but drops the connection before
    # the answer, as a flaky network would; the client retries with the same
    # idempotency key.
    import socket

    upstream_port = int(stack["url"].rsplit(":", 1)[1])
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    dropped = []

    def pipe(src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def serve():
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", upstream_port))
            if not dropped:
                dropped.append(True)
                request = client.recv(65536)
                upstream.sendall(request)
                upstream.recv(65536)  # the gateway answered; the client never hears it
                client.close()
                upstream.close()
                continue
            threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    assert not dropped
    from runhouse_gateway import RemoteFunction

    flaky = Gateway(f"http://127.0.0.1:{port}", stack["token"])
    spec = gw.function(jobs.add).to("local")._spec
    add = RemoteFunction(flaky, spec, "local")  # its first request, the create, is the one dropped
    handle = add.dispatch(1, 1, labels={"suite": "retry"})
    listener.close()
    assert dropped, "the proxy never dropped a request"
    assert handle.result(timeout=30) == 2
    assert len(gw.dispatches(labels={"suite": "retry"})) == 1


def test_a_wrong_token_gives_a_clear_error(stack):
    bad = Gateway(stack["url"], "not-a-token")
    with pytest.raises(GatewayError) as caught:
        bad.dispatches()
    assert caught.value.status == 401
    assert caught.value.code == "unauthenticated"
    assert "malformed" in caught.value.message


def test_reattaching_and_listing(gw):
    add = gw.function(jobs.add).to("local")
    handle = add.dispatch(5, 6, labels={"suite": "reattach"})
    again = gw.dispatch(handle.id)
    assert again.result(timeout=30) == 11
    assert [d.id for d in gw.dispatches(labels={"suite": "reattach"})] == [handle.id]
    assert [e["to_state"] for e in again.events()][-1] == "succeeded"


def test_a_schedule_runs_a_function_every_second_and_can_be_paused_and_deleted(gw):
    add = gw.function(jobs.add).to("local")
    schedule = gw.schedule("sdk-every-second", "* * * * * *", add, 20, 22, overlap="skip")
    assert len(schedule.data["upcoming"]) == 5
    assert schedule.data["dispatch"]["args"] == [20, 22]
    assert [s.name for s in gw.schedules()] == ["sdk-every-second"]
    deadline = time.monotonic() + 30
    while not schedule.runs(state="succeeded"):
        assert time.monotonic() < deadline, "no run succeeded"
        time.sleep(0.1)
    run = schedule.runs(state="succeeded")[0]
    assert run.result() == 42
    assert run.data["labels"]["schedule"] == "sdk-every-second" and "scheduled_for" in run.data["labels"]
    assert schedule.pause().data["paused"] is True and schedule.data["upcoming"] == []
    assert schedule.resume().data["next_fire_at"] is not None
    schedule.delete()
    with pytest.raises(GatewayError) as caught:
        schedule.refresh()
    assert caught.value.status == 404
    with pytest.raises(GatewayError) as caught:
        gw.schedule("sdk-bad", "not cron", add)
    assert caught.value.status == 422 and "cron" in caught.value.message


def test_a_class_is_constructed_once_and_its_methods_keep_state(gw, capsys):
    import models

    Trainer = gw.cls(models.Trainer).to("local")
    t = Trainer(0.01, name="bert-ft")
    assert "loading bert-base at lr=0.01" in capsys.readouterr().out, "the constructor's output is echoed"
    assert t.train_epoch(0) == {"epoch": 0, "epochs_run": 1}
    assert "epoch 0 done" in capsys.readouterr().out
    # Another thread, the same object, at the same time.
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda e: t.train_epoch(e), range(1, 5)))
    # Another client attaches by name and sees the same state.
    t2 = Gateway().instance("bert-ft")
    assert t2.evaluate() == {"epochs_run": 5, "lr": 0.01, "model": "bert-base"}
    # Methods also give a Dispatch handle, and an async twin.
    handle = t2.train_epoch.dispatch(5)
    assert handle.result() == {"epoch": 5, "epochs_run": 6}
    assert asyncio.run(t.evaluate.async_())["epochs_run"] == 6
    with pytest.raises(RemoteError) as caught:
        t.explode()
    assert caught.value.remote_type == "ZeroDivisionError"
    # The same name with the same arguments attaches; with others it is refused.
    assert Trainer(0.01, name="bert-ft").evaluate()["epochs_run"] == 6
    with pytest.raises(GatewayError) as refused:
        Trainer(0.5, name="bert-ft")
    assert refused.value.status == 409
    assert [i.name for i in gw.instances()] == ["bert-ft"]
    t.delete()
    assert t.data["state"] == "deleted"
    with pytest.raises(GatewayError) as gone:
        t2.evaluate()
    assert gone.value.code == "instance_deleted"


def test_a_constructor_that_raises_surfaces_as_a_remote_error(gw):
    import models

    with pytest.raises(RemoteError) as caught:
        gw.cls(models.Fragile).to("local")(name="fragile")
    assert caught.value.remote_type == "MemoryError"
    assert "model does not fit" in caught.value.remote_traceback
    assert gw.instance("fragile").state() == "failed"
    gw.instance("fragile").delete()


def test_a_failed_dispatch_is_reproduced_here_with_the_same_exception(gw, tmp_path):
    boom = gw.function(jobs.boom).to("local")
    handle = boom.dispatch()
    with pytest.raises(RemoteError):
        handle.result()
    deadline = time.time() + 30
    while True:
        try:
            record = handle.record()
            break
        except GatewayError as err:
            assert err.status == 404 and time.time() < deadline, err
            time.sleep(0.1)
    assert record["function"] == "jobs:boom" and record["state"] == "failed"
    assert record["python"].startswith("3.11")
    # In this interpreter: the exception itself.
    with pytest.raises(KeyError) as caught:
        handle.reproduce(dir=str(tmp_path / "here"), install=False)
    assert "missing-key" in str(caught.value)
    # In a subprocess: the local exception as a RemoteError, with its traceback.
    with pytest.raises(RemoteError) as local:
        handle.reproduce(dir=str(tmp_path / "sub"))
    assert local.value.remote_type == "KeyError" and "missing-key" in local.value.message
    assert "in boom" in local.value.remote_traceback


def test_a_cached_function_answers_an_identical_call_without_running_it(gw):
    add = gw.function(jobs.add, cache=True).to("local")
    first = add.dispatch(40, 2)
    assert first.result() == 42
    again = add.dispatch(40, 2)
    assert again.data["state"] == "succeeded" and again.data["cached_from"] == first.id
    assert again.result() == 42
    assert add(40, 3) == 43
    assert gw.function(jobs.add).to("local").dispatch(40, 2).data.get("cached_from") is None
