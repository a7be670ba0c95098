"""A private, real redis-server on a free loopback port, for tests (never a fake)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def free_cluster_port() -> int:
    """A free port whose cluster bus port (10000 above it) is free too, as a cluster node needs."""
    for _ in range(1000):
        with socket.socket() as probe, socket.socket() as bus:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
            if port + 10000 > 65535:
                continue
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port pair for a cluster node")


class Tls:
    """A self-signed certificate for 127.0.0.1 (openssl), for a redis-server that speaks only TLS."""

    def __init__(self, directory: str) -> None:
        self.cert = str(Path(directory) / "cert.pem")
        self.key = str(Path(directory) / "key.pem")
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                "-keyout", self.key, "-out", self.cert, "-subj", "/CN=127.0.0.1",
                "-addext", "subjectAltName=IP:127.0.0.1",
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip

    def connect(self, port: int) -> socket.socket:
        context = ssl.create_default_context(cafile=self.cert)
        return context.wrap_socket(
            socket.create_connection(("127.0.0.1", port), timeout=0.5), server_hostname="127.0.0.1"
        )


class RedisServer:
    """``redis-server`` on 127.0.0.1 with no persistence; :meth:`stop` and :meth:`start` restart it on the
    same port (a Redis restart, as a fleet would see one). ``extra``: more of its options (cluster mode);
    ``tls``: it speaks only TLS, with that certificate."""

    def __init__(
        self,
        *,
        extra: Sequence[str] = (),
        tls: Tls | None = None,
        directory: str | None = None,
        port: int | None = None,
    ) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            raise RuntimeError("redis-server is not installed (apt-get install -y redis-server)")
        self.executable = executable
        self.port = port or free_port()
        self.tls = tls
        self.extra = list(extra)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        if tls is not None:
            self.url = f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={tls.cert}"
        self.directory = directory or tempfile.mkdtemp(prefix="wemasy-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        ports = ["--port", str(self.port)]
        if self.tls is not None:
            ports = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", self.tls.cert]
            ports += ["--tls-key-file", self.tls.key, "--tls-ca-cert-file", self.tls.cert, "--tls-auth-clients", "no"]
        self.process = subprocess.Popen(
            [
                self.executable,
                *ports,
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", self.directory,
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        for _ in range(500):
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            with contextlib.suppress(OSError):
                if self.command(b"PING", timeout=0.1).startswith(b"+PONG"):
                    return
            time.sleep(0.01)  # a process starting up: nothing to wait on but its port
        raise RuntimeError("redis-server did not answer within 5 s")

    def command(self, line: bytes, timeout: float = 5.0) -> bytes:
        """Send one inline command and read (the start of) its answer."""
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        connection = raw if self.tls is None else self.tls.connect(self.port)
        if connection is not raw:
            raw.close()
        with connection:
            connection.sendall(line + b"\r\n")
            return connection.recv(4096)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def flush(self) -> None:
        self.command(b"FLUSHALL")


class RedisClusterServers:
    """A Redis Cluster of three masters (no replicas) on 127.0.0.1, made with ``redis-cli --cluster
    create``, as managed "cluster mode" gives one; ``tls``: every node speaks only TLS."""

    def __init__(self, *, tls: Tls | None = None) -> None:
        self.directory = tempfile.mkdtemp(prefix="wemasy-cluster-")
        self.nodes: list[RedisServer] = []
        for index in range(3):
            node_dir = Path(self.directory) / str(index)
            node_dir.mkdir()
            options = ["--cluster-enabled", "yes", "--cluster-config-file", str(node_dir / "nodes.conf")]
            options += ["--cluster-node-timeout", "2000"]
            if tls is not None:
                options += ["--tls-cluster", "yes"]
            node = RedisServer(extra=options, tls=tls, directory=str(node_dir), port=free_cluster_port())
            self.nodes.append(node)
        self.tls = tls
        first = self.nodes[0].port
        scheme = "redis" if tls is None else "rediss"
        query = "" if tls is None else f"?ssl_ca_certs={tls.cert}"
        self.url = f"{scheme}+cluster://127.0.0.1:{first}/{query}"
        #: A plain URL of one node: the budget finds the cluster behind it by itself.
        self.node_url = f"{scheme}://127.0.0.1:{first}/0{query}"

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        command = ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes)]
        command += ["--cluster-replicas", "0", "--cluster-yes"]
        if self.tls is not None:
            command += ["--tls", "--cacert", self.tls.cert]
        subprocess.run(command, check=True, capture_output=True, timeout=60)
        self.wait_ok()

    def wait_ok(self) -> None:
        """Until every node says the cluster is ok (slots assigned and agreed)."""
        for _ in range(1000):
            if all(b"cluster_state:ok" in node.command(b"CLUSTER INFO") for node in self.nodes):
                return
            time.sleep(0.01)  # the nodes gossip the new configuration: nothing to wait on but them
        raise RuntimeError("the Redis Cluster did not become ok within 10 s")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def flush(self) -> None:
        for node in self.nodes:
            node.flush()


class SentinelServers:
    """A master redis-server and one ``redis-sentinel`` watching it as the service ``wemasy``; ``tls``: both
    speak only TLS (and the sentinel reaches the master over it)."""

    SERVICE = "wemasy"

    def __init__(self, *, tls: Tls | None = None) -> None:
        self.master = RedisServer(tls=tls)
        self.tls = tls
        self.port = free_port()
        self.config = Path(self.master.directory) / "sentinel.conf"
        self.url = f"redis+sentinel://127.0.0.1:{self.port}/{self.SERVICE}"
        if tls is not None:
            self.url = f"rediss+sentinel://127.0.0.1:{self.port}/{self.SERVICE}?ssl_ca_certs={tls.cert}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.master.start()
        ports = f"port {self.port}\n"
        if self.tls is not None:
            ports = f"port 0\ntls-port {self.port}\ntls-cert-file {self.tls.cert}\ntls-key-file {self.tls.key}\n"
            ports += f"tls-ca-cert-file {self.tls.cert}\ntls-auth-clients no\ntls-replication yes\n"
        self.config.write_text(
            f"{ports}bind 127.0.0.1\ndir {self.master.directory}\n"
            f"sentinel monitor {self.SERVICE} 127.0.0.1 {self.master.port} 1\n",
            encoding="utf-8",
        )
        self.process = subprocess.Popen(
            [self.master.executable, str(self.config), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        line = f"SENTINEL get-master-addr-by-name {self.SERVICE}".encode()
        for _ in range(500):
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-sentinel exited with {self.process.returncode}")
            with contextlib.suppress(OSError):
                raw = socket.create_connection(("127.0.0.1", self.port), timeout=0.1)
                connection = raw if self.tls is None else self.tls.connect(self.port)
                if connection is not raw:
                    raw.close()
                with connection:
                    connection.sendall(line + b"\r\n")
                    if str(self.master.port).encode() in connection.recv(256):
                        return
            time.sleep(0.01)  # a process starting up: nothing to wait on but its port
        raise RuntimeError("redis-sentinel did not name the master within 5 s")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None
        self.master.stop()

    def flush(self) -> None:
        self.master.flush()
