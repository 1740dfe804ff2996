"""Images that need the closure: /bin/sh through the symlinks option, and Debian-packaged
servers built with ``packages``: lighttpd serving a page shipped with ``contents``, and the
nginx, redis and dnsmasq examples (units written as users write them, the user's
configuration over the package's), each answering on its port. The packages' own units
stay out of the images: portabled attaches exactly the units the spec names."""

from __future__ import annotations

import os
import socket
import struct
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO, require, unsquashfs_list
from tests.e2e.lib import attached, build_image, port_closed, unit

pytestmark = pytest.mark.e2e
HTTP_PORT = 18151


def shell_spec() -> dict:
    return {
        "pname": "shell", "version": "1",
        "units": [unit("shell.service", "[Service]\nType=oneshot\nRemainAfterExit=yes\n"
                       "ExecStart=/bin/sh -c 'echo \"sh says $((6 * 7)) as $0\"'\n")],
        "symlinks": [{"symlink": "/bin/sh", "object": "/usr/bin/dash"}],
    }


def test_symlinked_bin_sh_runs_the_service(container, tmp_path):
    c = container
    require(os.path.exists("/usr/bin/dash"), "dash is not installed")
    image = build_image(tmp_path, shell_spec())
    # the option's link is absolute (the host's own /usr/bin/sh -> dash is relative);
    # on a merged-/usr host it lands below the kept /bin -> usr/bin link
    links = {path: target for path, (mode, _, target) in unsquashfs_list(image).items()
             if mode.startswith("l")}
    assert "/usr/bin/dash" in {links.get("/bin/sh"), links.get("/usr/bin/sh")}, links
    with attached(c, image):
        start = c.start("shell.service")
        journal = c.journal("shell.service")
    assert start.ok, journal
    assert "sh says 42 as /bin/sh" in journal


@pytest.fixture(scope="module")
def lighttpd_image(tmp_path_factory):
    require(os.path.exists("/usr/sbin/lighttpd"),
            "lighttpd is not installed on the build host (apt-get install lighttpd)")
    src = tmp_path_factory.mktemp("www")
    (src / "index.html").write_text("<h1>served by a portable lighttpd</h1>\n")
    conf = src / "www.conf"
    conf.write_text(
        'server.document-root = "/srv/www"\n'
        f'server.bind = "127.0.0.1"\nserver.port = {HTTP_PORT}\n'
        'server.modules = ()\nindex-file.names = ("index.html")\n'
        'mimetype.assign = (".html" => "text/html")\n')
    return build_image(src / "out", {
        "pname": "www", "version": "1.0", "packages": ["lighttpd"],
        "units": [unit("www.service", "[Service]\nExecStart=/usr/sbin/lighttpd -D -f "
                       "/etc/lighttpd/www.conf\n")],
        "contents": [{"source": str(conf), "target": "/etc/lighttpd/www.conf"},
                     {"source": str(src / "index.html"), "target": "/srv/www/index.html"}],
    })


def test_debian_packaged_lighttpd_serves_a_page(container, lighttpd_image):
    c = container
    with attached(c, lighttpd_image):
        start = c.start("www.service")
        assert start.ok, c.journal("www.service")
        assert c.wait_for("www.service").active == "active", c.journal("www.service")
        body = ""
        for _ in range(50):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{HTTP_PORT}/", timeout=2) as r:
                    body = r.read().decode()
                    assert r.headers["Content-Type"] == "text/html"
                break
            except OSError:
                c.run("sleep", "0.1")
        assert body == "<h1>served by a portable lighttpd</h1>\n", c.journal("www.service")
        # it runs as the profile's dynamic user, not as root
        pid = c.systemctl("show", "-p", "MainPID", "--value", "www.service").stdout.strip()
        status = c.read_file(f"/proc/{pid}/status")
        uid = next(ln.split()[1] for ln in status.splitlines() if ln.startswith("Uid:"))
        assert uid != "0"
    assert port_closed(HTTP_PORT)


# ports of the examples (examples/nginx, redis, dnsmasq): none of the other tests use them
NGINX_PORT, REDIS_PORT, DNS_PORT = 18161, 18162, 18163
PACKAGED = {  # example -> (the program its package installs, the unit the spec names)
    "nginx": ("/usr/sbin/nginx", "nginx.service"),
    "redis": ("/usr/bin/redis-server", "redis.service"),
    "dnsmasq": ("/usr/sbin/dnsmasq", "dns.service"),
}


@pytest.fixture(scope="module")
def example_image(tmp_path_factory):
    """Build an example with the CLI's pipeline (verify included), once per module."""
    from portable_service.api import build_image as build
    from portable_service.builder.spec import load_spec

    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        program = PACKAGED[name][0]
        require(os.path.exists(program), f"{program} is not installed on the build host "
                "(scripts/bootstrap.sh --test installs it)")
        if name not in built:
            built[name] = build(load_spec(REPO / "examples" / name), tmp_path_factory.mktemp(name))
        return built[name]

    return get


@pytest.mark.parametrize("name", sorted(PACKAGED))
def test_a_packaged_image_carries_only_the_spec_units(example_image, name):
    image = example_image(name)
    files = unsquashfs_list(image)
    unit = PACKAGED[name][1]
    # Debian's nginx.service, redis-server.service, dnsmasq@.service, init scripts: all out
    assert sorted(p for p in files if "/systemd/" in p and p.endswith((".service", ".socket",
                                                                          ".timer"))) == [
        f"/etc/systemd/system/{unit}"]
    assert not any(p.startswith("/etc/init.d/") for p in files)
    # libc6 gives libc.so.6, not its gconv modules; no perl for the packages' helpers
    assert not any("/gconv/" in p for p in files)
    assert "/usr/bin/perl" not in files and PACKAGED[name][0] in files
    # redis-tools gives the server's binary (redis-server -> redis-check-rdb), not the tools
    assert not {"/usr/bin/redis-cli", "/usr/bin/redis-benchmark"} & set(files)


def _serve_check(c, unit_name: str, probe) -> str:
    """Start the unit, then ``probe()`` until it answers (or the unit fails); its answer."""
    start = c.start(unit_name)
    assert start.ok, c.journal(unit_name)
    assert c.wait_for(unit_name).active == "active", c.journal(unit_name)
    deadline = time.monotonic() + 10
    while True:
        try:
            return probe()
        except OSError:
            if time.monotonic() > deadline or c.unit_state(unit_name).active == "failed":
                raise AssertionError(c.journal(unit_name)) from None
            time.sleep(0.1)


def test_debian_packaged_nginx_serves_with_the_users_config(container, example_image):
    c = container
    image = example_image("nginx")
    with attached(c, image):
        assert c.attached_units() == ["nginx.service"]

        def get() -> tuple[str, str]:
            with urllib.request.urlopen(f"http://127.0.0.1:{NGINX_PORT}/", timeout=2) as r:
                return r.read().decode(), r.headers["Content-Type"]

        body, ctype = _serve_check(c, "nginx.service", get)
        assert body == (REPO / "examples/nginx/html/index.html").read_text()
        assert ctype == "text/html"  # from nginx-common's mime.types, included by the user's conf
    assert port_closed(NGINX_PORT)


def test_a_package_unit_in_the_image_would_be_attached(container, tmp_path):
    """Why packages leave their units out: the control, with Debian's redis-server.service put
    back into the image (the build refuses it through contents, so it is added to the planned
    tree). portabled attaches it next to the spec's unit (prefix "redis")."""
    from pathlib import PurePosixPath

    from portable_service.builder.atomic import write_atomically
    from portable_service.builder.pipeline import plan as plan_build
    from portable_service.builder.spec import load_spec
    from portable_service.progress import QUIET

    stock = Path("/lib/systemd/system/redis-server.service")
    require(stock.exists(), "redis-server is not installed (apt-get install redis-server)")
    spec = load_spec(REPO / "examples/redis")
    plan = plan_build(spec)
    plan.tree.add_file(PurePosixPath("/usr/lib/systemd/system/redis-server.service"),
                       data=stock.read_bytes())
    image = tmp_path / spec.image_name
    write_atomically(image, lambda tmp: plan.writer.write(plan.tree, tmp, plan.options, QUIET))
    with attached(container, image):
        assert container.attached_units() == ["redis-server.service", "redis.service"]


def _redis(*commands: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", REDIS_PORT), timeout=2) as s:
        s.sendall(b"".join(commands))
        data = b""
        while data.count(b"\r\n") < len(commands) + 1 and (chunk := s.recv(4096)):
            data += chunk
        return data


def test_debian_packaged_redis_answers(container, example_image):
    c = container
    image = example_image("redis")
    with attached(c, image):
        # redis-server's own redis-server.service matches the prefix "redis": not attached
        assert c.attached_units() == ["redis.service"]
        reply = _serve_check(c, "redis.service", lambda: _redis(
            b"PING\r\n", b"SET portable yes\r\n", b"GET portable\r\n"))
        assert reply == b"+PONG\r\n+OK\r\n$3\r\nyes\r\n", c.journal("redis.service")
    assert port_closed(REDIS_PORT)


def dns_query(name: str, port: int) -> list[str]:
    """The A records of ``name`` from 127.0.0.1:port over UDP (one question, no compression
    needed in the query; answers name the question by a pointer)."""
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    query = struct.pack(">HHHHHH", 0x5053, 0x0100, 1, 0, 0, 0) + qname + struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(query, ("127.0.0.1", port))
        reply = s.recv(512)
    ident, _flags, _qd, answers = struct.unpack(">HHHH", reply[:8])
    assert ident == 0x5053
    pos = 12 + len(qname) + 4
    out = []
    for _ in range(answers):
        pos += 2 if reply[pos] & 0xC0 == 0xC0 else reply.index(b"\0", pos) + 1 - pos
        rtype, _cls, _ttl, length = struct.unpack(">HHIH", reply[pos:pos + 10])
        pos += 10
        if rtype == 1:
            out.append(socket.inet_ntoa(reply[pos:pos + length]))
        pos += length
    return out


def test_debian_packaged_dnsmasq_answers(container, example_image):
    c = container
    image = example_image("dnsmasq")
    with attached(c, image):
        assert c.attached_units() == ["dns.service"]
        answers = _serve_check(c, "dns.service", lambda: dns_query("portable.test", DNS_PORT))
        assert answers == ["192.0.2.1"], c.journal("dns.service")
