"""A real ComfyUI server on 127.0.0.1 for tests: its own base directory, the pack in custom_nodes/.

Started as ``python main.py --cpu`` in a subprocess; ready when it logs its URL. Prompts go through
``POST /prompt`` and their outcome is read from the websocket (execution_success / execution_error),
so nothing waits on a clock. Only ever contacts 127.0.0.1.
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import ks_fixtures as F

READY_LINE = "To see the GUI go to:"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    def __init__(self, base_dir: Path, custom_nodes: dict[str, Path], start_timeout: float = 240.0,
                 env: dict[str, str] | None = None):
        self.root = F.find_comfyui()
        self.base_dir = base_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log: list[str] = []
        nodes_dir = base_dir / "custom_nodes"
        nodes_dir.mkdir(parents=True, exist_ok=True)
        for name, source in custom_nodes.items():
            (nodes_dir / name).symlink_to(source, target_is_directory=True)
        # one torch thread, as the test process (conftest.py): the server runs tiny models too
        env = dict(os.environ, PYTHONUNBUFFERED="1", **{"OMP_NUM_THREADS": "1", **(env or {})})
        # --disable-api-nodes: the paid-API nodes are not needed, and importing them may try the network
        self.process = subprocess.Popen(
            [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
             "--base-directory", str(base_dir), "--database-url", "sqlite:///:memory:", "--disable-auto-launch",
             "--disable-api-nodes"],
            cwd=self.root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        # A thread drains the log all the time: a full pipe would block the server's next write (and so
        # the server) while a test is busy elsewhere.
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()
        try:
            self._wait_ready(start_timeout)
        except BaseException:  # no caller holds the object yet: stop the process here, not leak it
            self.stop()
            raise

    def _read_log(self) -> None:
        for line in self.process.stdout:
            with self._lock:
                self.log.append(line)
            if READY_LINE in line:
                self._ready.set()
        self._ready.set()  # the process ended: wake the waiter, which then sees the exit

    def _wait_ready(self, timeout: float) -> None:
        if not self._ready.wait(timeout):
            raise RuntimeError(f"ComfyUI did not log {READY_LINE!r} within {timeout:.0f} s:\n" + self.tail())
        if self.process.poll() is not None and not any(READY_LINE in line for line in self.log):
            raise RuntimeError("ComfyUI exited while starting:\n" + self.tail())

    def tail(self, lines: int = 40) -> str:
        with self._lock:
            return "".join(self.log[-lines:])

    def drain_log(self) -> str:
        """Everything the server has logged so far."""
        with self._lock:
            return "".join(self.log)

    def failed_imports(self) -> list[str]:
        """Log lines saying that one of the custom-node folders given here did not import."""
        names = [p.name for p in (self.base_dir / "custom_nodes").iterdir()]
        return [line for line in self.drain_log().splitlines()
                if ("IMPORT FAILED" in line or "Cannot import" in line) and any(n in line for n in names)]

    def run(self, prompt: dict, timeout: float = 120.0) -> dict:
        """Queue ``prompt``; return {"status": "refused"|"error"|"success", "message", "outputs"}."""
        return asyncio.run(self._run(prompt, timeout))

    async def _run(self, prompt: dict, timeout: float) -> dict:
        import aiohttp
        client_id = uuid.uuid4().hex
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{self.url}/ws?clientId={client_id}") as ws:
                async with session.post(f"{self.url}/prompt", json={"prompt": prompt, "client_id": client_id}) as r:
                    body = await r.json()
                if r.status != 200:
                    return {"status": "refused", "message": json.dumps(body), "outputs": {}}
                prompt_id = body["prompt_id"]
                outputs = {}
                async with asyncio.timeout(timeout):
                    async for message in ws:
                        if message.type != aiohttp.WSMsgType.TEXT:
                            continue
                        event = json.loads(message.data)
                        data = event.get("data", {})
                        if data.get("prompt_id") != prompt_id:
                            continue
                        if event["type"] == "executed":
                            outputs[data["node"]] = data["output"]
                        elif event["type"] == "execution_error":
                            return {"status": "error", "message": data.get("exception_message", ""),
                                    "type": data.get("exception_type", ""), "outputs": outputs}
                        elif event["type"] == "execution_success":
                            return {"status": "success", "message": "", "outputs": outputs}
                        elif event["type"] == "execution_interrupted":
                            return {"status": "interrupted", "message": "", "outputs": outputs}
        raise RuntimeError(f"prompt {prompt_id} never finished")

    def get(self, path: str):
        import urllib.request
        with urllib.request.urlopen(f"{self.url}{path}", timeout=30) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
