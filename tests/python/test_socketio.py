"""python-socketio 5.x as a second real client of fanout-node.

python-socketio writes JSON with every non-ASCII character escaped (`"caf\\u00e9"`), which
is valid JSON that the published socketioxide-parser-common 0.17.3 could not read in object
keys and event names (see parser/src/lib.rs). These tests drive a real node (embedded mode,
a free port on 127.0.0.1, started from FANOUT_NODE_BIN and stopped by PID) with the sync
python-socketio client over both transports. Every wait is bounded.

Run: python -m unittest -v test_socketio   (from tests/python, with requirements.txt installed)
"""

import json
import os
import queue
import signal
import socket
import subprocess
import time
import unittest
import urllib.error
import urllib.request
import uuid

import socketio

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("FANOUT_NODE_BIN") or os.path.join(REPO, "target", "debug", "fanout-node")
HOST = "127.0.0.1"
TRANSPORTS = (["polling"], ["websocket"])
WAIT = 5  # seconds, for every single wait

NODE = {}  # url, proc


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def api(method, path, body=None, token=None):
    """A REST call; returns (status, parsed JSON body or None)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(NODE["url"] + path, data=data, method=method)
    if data is not None:
        req.add_header("content-type", "application/json")
    if token:
        req.add_header("authorization", token)
    try:
        with urllib.request.urlopen(req, timeout=WAIT) as res:
            status, text = res.status, res.read().decode()
    except urllib.error.HTTPError as err:
        status, text = err.code, err.read().decode()
    return status, (json.loads(text) if text else None)


def new_user():
    """Signs a unique user up and logs in: {"username", "userId", "token"}."""
    username = "py-" + uuid.uuid4().hex[:12]
    password = "secret123"
    status, body = api("POST", "/api/users",
                       {"username": username, "email": username + "@example.com",
                        "password": password})
    assert status == 201, (status, body)
    status, body = api("POST", "/api/users/login", {"username": username, "password": password})
    assert status == 200, (status, body)
    return {"username": username, "userId": body["userId"], "token": body["id"]}


def setUpModule():
    port = free_port()
    NODE["url"] = "http://%s:%d" % (HOST, port)
    env = dict(os.environ, FANOUT_LOG="warn")
    NODE["proc"] = subprocess.Popen([BIN, "--bind", "%s:%d" % (HOST, port)], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while True:
        if NODE["proc"].poll() is not None:
            raise RuntimeError("fanout-node exited: " + NODE["proc"].stderr.read().decode())
        try:
            with urllib.request.urlopen(NODE["url"] + "/healthz", timeout=1) as res:
                if res.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            NODE["proc"].kill()
            raise RuntimeError("fanout-node not healthy within 10 s")
        time.sleep(0.05)


def tearDownModule():
    proc = NODE.get("proc")
    if proc is None or proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        code = proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
        raise
    assert code == 0, "fanout-node exit code %s" % code


class Client:
    """A python-socketio client that records every event it receives."""

    def __init__(self, transports, auth=None):
        self.events = queue.Queue()
        self.connect_errors = []
        self.sio = socketio.Client(reconnection=False)
        self.sio.on("*", lambda event, *args: self.events.put((event, args)))
        self.sio.on("connect_error", self.connect_errors.append)
        self.sio.connect(NODE["url"], auth=auth, transports=transports, wait_timeout=WAIT)

    def call(self, event, data=None):
        return self.sio.call(event, data, timeout=WAIT)

    def wait_event(self, name):
        """The arguments of the next event `name` (other events are skipped)."""
        deadline = time.monotonic() + WAIT
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no %r event within %s s" % (name, WAIT))
            try:
                event, args = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if event == name:
                return args

    def close(self):
        self.sio.disconnect()


class SocketIOTest(unittest.TestCase):
    def setUp(self):
        self.clients = []

    def tearDown(self):
        for c in self.clients:
            c.close()

    def client(self, transports, auth=None):
        c = Client(transports, auth)
        self.clients.append(c)
        return c

    def authed(self, transports, user=None):
        user = user or new_user()
        return self.client(transports, {"token": user["token"]}), user

    def test_handshake_auth(self):
        for transports in TRANSPORTS:
            with self.subTest(transports=transports):
                c, user = self.authed(transports)
                self.assertEqual(c.sio.transport(), transports[0])
                reply = c.call("whoami")
                self.assertEqual(reply["result"]["userId"], user["userId"])

    def test_authentication_event(self):
        for transports in TRANSPORTS:
            with self.subTest(transports=transports):
                user = new_user()
                c = self.client(transports)
                before = c.call("whoami")
                self.assertEqual(before["error"]["code"], "unauthorized")
                c.sio.emit("authentication", {"id": user["token"], "userId": user["userId"]})
                self.assertEqual(c.wait_event("authenticated"), ({"userId": user["userId"]},))
                self.assertEqual(c.call("whoami")["result"]["userId"], user["userId"])

    def test_wrong_token_refused(self):
        for transports in TRANSPORTS:
            with self.subTest(transports=transports, how="handshake"):
                with self.assertRaises(socketio.exceptions.ConnectionError):
                    self.client(transports, {"token": "not-a-token"})
            with self.subTest(transports=transports, how="authentication event"):
                c = self.client(transports)
                c.sio.emit("authentication", {"id": "not-a-token", "userId": "nobody"})
                (body,) = c.wait_event("unauthorized")
                self.assertIsInstance(body["message"], str)
                deadline = time.monotonic() + WAIT
                while c.sio.connected and time.monotonic() < deadline:
                    time.sleep(0.05)
                self.assertFalse(c.sio.connected, "refused socket is disconnected")

    def test_non_ascii_keys_and_data(self):
        data = {"prénom": "Zoé", "città": ["Zürich", "東京", "😀"], "\"quoted\\key\"": "a\"b"}
        for transports in TRANSPORTS:
            with self.subTest(transports=transports):
                topic = "news-" + uuid.uuid4().hex[:8]
                pub, _ = self.authed(transports)
                sub, _ = self.authed(transports)
                self.assertEqual(sub.call("subscribe", {"topic": topic}),
                                 {"ok": True, "topic": topic})
                self.assertEqual(pub.call("subscribe", topic), {"ok": True, "topic": topic})
                ack = pub.call("publish", {"topic": topic, "data": data})
                self.assertEqual(ack, {"ok": True})
                self.assertEqual(sub.wait_event(topic), (data,))
                self.assertEqual(pub.wait_event(topic), (data,), "echo to the publisher")

    def test_topic_and_event_named_cafe(self):
        for transports in TRANSPORTS:
            with self.subTest(transports=transports):
                sub, _ = self.authed(transports)
                pub, _ = self.authed(transports)
                self.assertEqual(sub.call("subscribe", "café"), {"ok": True, "topic": "café"})
                payload = {"crème": "brûlée", "n": len(transports[0])}
                self.assertEqual(pub.call("publish", {"topic": "café", "data": payload}),
                                 {"ok": True})
                self.assertEqual(sub.wait_event("café"), (payload,))
                self.assertEqual(sub.call("unsubscribe", "café"), {"ok": True, "topic": "café"})

    def test_unknown_event_names_with_escapes(self):
        for transports in TRANSPORTS:
            with self.subTest(transports=transports):
                c, user = self.authed(transports)
                for name in ['a"b', "café-x", "a\\b", "tab\there"]:
                    reply = c.call(name, {"prénom": "Zoé"})
                    self.assertEqual(reply["error"]["code"], "unknown_method", name)
                self.assertTrue(c.sio.connected)
                self.assertEqual(c.call("whoami")["result"]["userId"], user["userId"])


if __name__ == "__main__":
    unittest.main()
