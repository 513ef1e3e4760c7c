"""The CLI's parser: flags, KVSTORE_* environment defaults, plug-in subcommands."""

from __future__ import annotations

import os

import pytest

from kvstore.cli import build_parser, main


def test_serve_flags_parse() -> None:
    args = build_parser().parse_args(
        ["serve", "--id", "2", "--listen", "127.0.0.1:7002", "--data-dir", "/d", "--tick-ms", "20"]
    )
    assert (args.id, args.listen, args.data_dir, args.tick_ms) == (2, "127.0.0.1:7002", "/d", 20)
    assert args.consensus == "raft" and args.election_ticks == 10


def test_every_flag_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVSTORE_ID", "3")
    monkeypatch.setenv("KVSTORE_LISTEN", "0.0.0.0:7003")
    monkeypatch.setenv("KVSTORE_PEERS", "1=a:1,2=b:2,3=c:3")
    monkeypatch.setenv("KVSTORE_DATA_DIR", "/data")
    monkeypatch.setenv("KVSTORE_METRICS_PORT", "9100")
    monkeypatch.setenv("KVSTORE_TICK_MS", "100")
    monkeypatch.setenv("KVSTORE_CONSENSUS", "paxos")
    args = build_parser().parse_args(["serve"])
    assert args.id == 3 and args.listen == "0.0.0.0:7003" and args.peers == "1=a:1,2=b:2,3=c:3"
    assert args.data_dir == "/data" and args.metrics_port == 9100 and args.tick_ms == 100
    assert args.consensus == "paxos"
    # The command line wins over the environment.
    assert build_parser().parse_args(["serve", "--id", "5"]).id == 5


def test_client_commands_default_to_the_local_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    args = build_parser().parse_args(["get", "k"])
    assert args.endpoints == "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"
    assert args.read_mode == "strong"
    monkeypatch.setenv("KVSTORE_ENDPOINTS", "h:1")
    assert build_parser().parse_args(["put", "k", "v"]).endpoints == "h:1"


def test_cas_arguments() -> None:
    a = build_parser().parse_args(["cas", "k", "old", "new"])
    assert (a.key, a.expected, a.new, a.expect_absent) == ("k", "old", "new", False)
    a = build_parser().parse_args(["cas", "k", "new", "--expect-absent"])
    assert (a.key, a.expected, a.new, a.expect_absent) == ("k", None, "new", True)


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["serve"])  # --id, --listen, --data-dir missing
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["get", "k", "--read-mode", "sloppy"])
    assert e.value.code == 2


def test_bad_peers_flag_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["serve", "--id", "1", "--listen", "127.0.0.1:0", "--data-dir", "/x", "--peers", "oops"]
    )
    assert code == 2
    assert "ID=HOST:PORT" in capsys.readouterr().err


def test_unreachable_cluster_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["get", "k", "--endpoints", "127.0.0.1:1", "--timeout", "0.5"])
    assert code == 3
    assert "DeadlineExceeded" in capsys.readouterr().err


def test_plugin_subcommands_register() -> None:
    help_text = build_parser().format_help()
    for cmd in (
        "serve",
        "cluster",
        "put",
        "get",
        "delete",
        "cas",
        "scan",
        "status",
        "transfer-leader",
    ):
        assert cmd in help_text


def test_toml_config_file(
    tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kvstore.cli as cli
    import kvstore.cli_serve as cli_serve

    cfg = tmp_path / "node.toml"  # type: ignore[operator]
    cfg.write_text(
        'id = 4\nlisten = "127.0.0.1:7004"\ndata-dir = "/var/lib/kv"\ntick_ms = 25\n'
        '[peers]\n1 = "a:1"\n4 = "127.0.0.1:7004"\n'
    )
    seen = {}
    monkeypatch.setattr(cli_serve, "cmd_serve", lambda args: seen.update(vars(args)) or 0)
    monkeypatch.setenv("KVSTORE_TICK_MS", "30")
    assert cli.main(["serve", "--config", str(cfg), "--listen", "127.0.0.1:9"]) == 0
    assert seen["id"] == 4 and seen["data_dir"] == "/var/lib/kv"
    assert seen["peers"] == "1=a:1,4=127.0.0.1:7004"
    assert seen["tick_ms"] == 30  # the environment beats the file
    assert seen["listen"] == "127.0.0.1:9"  # the command line beats both


# -- every source checked the same way (issue 11.9) -------------------------------------
_SERVE = ["serve", "--id", "1", "--listen", "127.0.0.1:0", "--data-dir"]


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The options `kvstore serve` would run a node with (the node is not started)."""
    import kvstore.server.process as process

    seen: list[object] = []
    monkeypatch.setattr(process, "run", lambda opts: seen.append(opts) or True)
    return seen


@pytest.mark.parametrize(
    ("var", "value", "command", "says"),
    [
        ("KVSTORE_TIMEOUT", "abc", ["get", "k"], "expected a number of seconds > 0, got 'abc'"),
        ("KVSTORE_TIMEOUT", "-1", ["get", "k"], "> 0"),
        ("KVSTORE_CONSENSUS", "bogus", [*_SERVE, "D"], "expected one of raft, paxos"),
        ("KVSTORE_TICK_MS", "0", [*_SERVE, "D"], "expected an integer >= 1, got '0'"),
        ("KVSTORE_JOIN", "maybe", [*_SERVE, "D"], "expected true or false"),
        ("KVSTORE_LISTEN", "nowhere", ["serve", "--id", "1", "--data-dir", "D"], "HOST:PORT"),
        ("KVSTORE_LOG_LEVEL", "LOUD", [*_SERVE, "D"], "expected one of DEBUG"),
    ],
)
def test_a_bad_environment_value_is_a_usage_error_naming_it(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: object,
    served: list[object],
    var: str,
    value: str,
    command: list[str],
    says: str,
) -> None:
    monkeypatch.setenv(var, value)
    data_dir = f"{tmp_path}/data"
    assert main([data_dir if a == "D" else a for a in command]) == 2
    err = capsys.readouterr().err
    assert var in err and says in err and "Traceback" not in err
    assert served == [] and not os.path.exists(data_dir), "nothing started, nothing written"


def test_the_command_line_still_wins_over_a_bad_environment_value(
    monkeypatch: pytest.MonkeyPatch, served: list[object]
) -> None:
    monkeypatch.setenv("KVSTORE_CONSENSUS", "bogus")
    assert main([*_SERVE, "/x", "--consensus", "paxos"]) == 0
    assert [o.consensus for o in served] == ["paxos"]  # type: ignore[attr-defined]


def test_config_file_values_are_checked_like_flags(
    tmp_path: object, capsys: pytest.CaptureFixture[str], served: list[object]
) -> None:
    def run(toml: str) -> int:
        path = f"{tmp_path}/kv.toml"
        with open(path, "w") as f:
            f.write(toml)
        return main(["serve", "--config", path])

    base = 'id = 2\nlisten = "127.0.0.1:0"\ndata-dir = "/x"\npeers = {2 = "127.0.0.1:0"}\n'
    assert run(base + 'join = "false"\ntick-ms = 20\n') == 0
    assert run(base + "join = true\n") == 0
    assert [(o.join, o.tick_ms, o.peers) for o in served] == [  # type: ignore[attr-defined]
        (False, 20, {2: "127.0.0.1:0"}),
        (True, 50, {2: "127.0.0.1:0"}),
    ]
    for bad, says in (
        ('join = "nope"', "config file key 'join': expected true or false"),
        ('tick-ms = "abc"', "config file key 'tick-ms': expected an integer >= 1, got 'abc'"),
        ("tick-ms = 2.5", "expected an integer >= 1, got '2.5'"),
        ('consensus = "bogus"', "expected one of raft, paxos"),
        ("map-size-mb = true", "expected a single value"),
        ("tick_msec = 5", "unknown key(s) tick-msec"),
    ):
        capsys.readouterr()
        assert run(base + bad + "\n") == 2, bad
        assert says in capsys.readouterr().err, bad
    assert len(served) == 2


def test_node_options_are_checked_together(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], served: list[object]
) -> None:
    monkeypatch.setenv("KVSTORE_HEARTBEAT_TICKS", "10")
    assert main([*_SERVE, "/x"]) == 2
    assert "heartbeat_ticks must be below election_ticks (10), got 10" in capsys.readouterr().err
    assert main([*_SERVE, "/x", "--election-ticks", "20"]) == 0


def test_no_environment_variable_turns_off_commit_before_ack(
    monkeypatch: pytest.MonkeyPatch, served: list[object]
) -> None:
    for name in ("KVSTORE_UNSAFE_ACK_BEFORE_COMMIT", "KVSTORE_UNSAFE_ACK"):
        monkeypatch.setenv(name, "1")
    assert main([*_SERVE, "/x"]) == 0
    assert main([*_SERVE, "/x"], unsafe_ack_before_commit=True) == 0  # kvstore.jepsen.unsafe_node
    assert [o.unsafe_ack_before_commit for o in served] == [False, True]  # type: ignore[attr-defined]


def test_tls_flags_come_from_every_source_alike(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: object,
    served: list[object],
) -> None:
    """etcd's TLS flags as TOML keys and KVSTORE_* variables (issue 14), checked together."""
    path = f"{tmp_path}/kv.toml"
    with open(path, "w") as f:
        f.write(
            'id = 1\nlisten = "127.0.0.1:0"\ndata-dir = "/x"\n'
            'cert-file = "n.pem"\nkey-file = "n-key.pem"\ntrusted-ca-file = "ca.pem"\n'
        )
    assert main(["serve", "--config", path]) == 2  # client TLS without the peer flags
    assert "--peer-cert-file" in capsys.readouterr().err
    monkeypatch.setenv("KVSTORE_PEER_CERT_FILE", "n.pem")
    monkeypatch.setenv("KVSTORE_PEER_KEY_FILE", "n-key.pem")
    monkeypatch.setenv("KVSTORE_PEER_TRUSTED_CA_FILE", "ca.pem")
    monkeypatch.setenv("KVSTORE_CLIENT_CERT_AUTH", "yes")
    assert main(["serve", "--config", path]) == 0
    tls = served[0].tls  # type: ignore[attr-defined]
    assert (tls.cert_file, tls.peer_trusted_ca_file, tls.client_cert_auth) == (
        "n.pem",
        "ca.pem",
        True,
    )
    monkeypatch.setenv("KVSTORE_CLIENT_CERT_AUTH", "maybe")
    assert main(["serve", "--config", path]) == 2
    assert "KVSTORE_CLIENT_CERT_AUTH: expected true or false" in capsys.readouterr().err


def test_certs_init_into_an_unwritable_place_exits_1_as_a_local_file_error(
    tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    """A local file that cannot be written is exit 1 for every command (snapshot save
    too); 3 means the cluster answered with an error or could not be reached."""
    blocker = os.path.join(str(tmp_path), "not-a-dir")
    with open(blocker, "w") as f:
        f.write("x")
    assert main(["certs", "init", os.path.join(blocker, "certs"), "--nodes", "1"]) == 1
    assert "kvstore certs init:" in capsys.readouterr().err
