"""/js_modules and settings.js_module, as Unit 1.35 built with njs answers them.

No recorded transcript covers them (the recorded build had no njs); the answers follow
``nxt_controller_process_script`` and ``nxt_conf_vldt_js_module`` of the 1.35.0 sources, whose
sentences these tests spell out.
"""

from __future__ import annotations

import json

import trio

from unit_p2p.unit.emulator import UnitEmulator
from unit_p2p.unit.emulator.rawclient import request

MODULE = b"export default {hello(r) { return 'hi'; }};\n"
ROUTES = {"listeners": {}, "routes": [{"action": {"return": 204}}]}


def body(got) -> object:
    return json.loads(got.body)


async def put_conf(addr: str, conf: dict):
    return await request(addr, "PUT", "/config", json.dumps(conf).encode())


async def test_upload_list_get_and_refuse_duplicates(start_emulator) -> None:
    emulator = await start_emulator()
    addr = emulator.control_address
    with trio.fail_after(10):
        assert body(await request(addr, "GET", "/js_modules")) == {}
        up = await request(addr, "PUT", "/js_modules/auth", MODULE)
        assert (up.status, body(up)) == (200, {"success": "JS module uploaded."})
        again = await request(addr, "PUT", "/js_modules/auth", MODULE)
        assert (again.status, body(again)) == (400, {"error": "JS module already exists."})
        assert body(await request(addr, "GET", "/js_modules")) == {"auth": MODULE.decode()}
        assert body(await request(addr, "GET", "/js_modules/auth")) == MODULE.decode()
        sub = await request(addr, "GET", "/js_modules/auth/x")
        assert (sub.status, body(sub)) == (404, {"error": "Invalid path."})
        missing = await request(addr, "GET", "/js_modules/nope")
        assert (missing.status, body(missing)) == (404, {"error": "JS module doesn't exist."})
        root = body(await request(addr, "GET", "/"))
        assert list(root) == ["certificates", "js_modules", "config", "status"]
        assert root["js_modules"] == {"auth": MODULE.decode()}
        assert emulator.js_modules == {"auth": MODULE.decode()}


async def test_names_and_methods(start_emulator) -> None:
    addr = (await start_emulator()).control_address
    bad_name = {"error": "Invalid JS module name."}
    with trio.fail_after(10):
        for method, path in [("PUT", "/js_modules"), ("PUT", "/js_modules/a/b"),
                             ("DELETE", "/js_modules"), ("POST", "/js_modules")]:
            got = await request(addr, method, path, MODULE)
            assert (got.status, body(got)) == (400, bad_name), (method, path)
        post = await request(addr, "POST", "/js_modules/a", MODULE)
        assert (post.status, body(post)) == (405, {"error": "Invalid method."})


async def test_settings_js_module_must_name_uploaded_modules(start_emulator) -> None:
    emulator = await start_emulator()
    addr = emulator.control_address
    with trio.fail_after(10):
        assert (await put_conf(addr, ROUTES)).status == 200
        before = (await request(addr, "GET", "/config")).body
        for value, detail in [
            ("auth", 'JS module "auth" is not found.'),
            (["auth"], 'JS module "auth" is not found.'),
            ([1], 'The "js_module" array must contain only string values.'),
            (1, 'The "js_module" value must be either a string or an array, but not an integer '
                "number."),
        ]:
            got = await put_conf(addr, {"settings": {"js_module": value}, **ROUTES})
            assert (got.status, body(got)) == (
                400, {"error": "Invalid configuration.", "detail": detail}), value
            assert (await request(addr, "GET", "/config")).body == before
        assert (await request(addr, "PUT", "/js_modules/auth", MODULE)).status == 200
        assert (await request(addr, "PUT", "/js_modules/log", MODULE)).status == 200
        conf = {"settings": {"http": {"server_version": False}, "js_module": ["auth", "log"]},
                **ROUTES}
        assert (await put_conf(addr, conf)).status == 200
        # A module in use cannot be deleted; once the config drops it, it can.
        used = await request(addr, "DELETE", "/js_modules/log")
        assert (used.status, body(used)) == (
            400, {"error": "JS module is used in the configuration."})
        conf["settings"]["js_module"] = "auth"
        assert (await put_conf(addr, conf)).status == 200
        gone = await request(addr, "DELETE", "/js_modules/log")
        assert (gone.status, body(gone)) == (200, {"success": "JS module deleted."})
        again = await request(addr, "DELETE", "/js_modules/log")
        assert (again.status, body(again)) == (404, {"error": "JS module doesn't exist."})
    assert emulator.config == conf


async def test_modules_persist_in_the_state_dir(nursery, tmp_path) -> None:
    state = tmp_path / "state"
    conf = {"settings": {"js_module": "auth"}, **ROUTES}

    async def start() -> tuple[UnitEmulator, trio.CancelScope, trio.Event]:
        emulator = UnitEmulator(f"unix:{tmp_path}/c.sock", state_dir=state)
        scope, stopped = trio.CancelScope(), trio.Event()

        async def run(task_status=trio.TASK_STATUS_IGNORED) -> None:
            try:
                with scope:
                    await emulator.serve(task_status=task_status)
            finally:
                stopped.set()

        await nursery.start(run)
        return emulator, scope, stopped

    with trio.fail_after(10):
        emulator, scope, stopped = await start()
        addr = emulator.control_address
        assert (await request(addr, "PUT", "/js_modules/auth", MODULE)).status == 200
        assert (await put_conf(addr, conf)).status == 200
        scope.cancel()
        await stopped.wait()
        emulator, scope, stopped = await start()
        assert body(await request(emulator.control_address, "GET", "/js_modules/auth")) == (
            MODULE.decode())
        assert emulator.config == conf
        scope.cancel()


async def test_without_njs_there_is_no_js_modules_api(start_emulator) -> None:
    addr = (await start_emulator(njs=False)).control_address
    with trio.fail_after(10):
        got = await request(addr, "GET", "/js_modules")
        assert (got.status, body(got)) == (404, {"error": "Value doesn't exist."})
        assert "js_modules" not in body(await request(addr, "GET", "/"))
