"""The production deployment files: docker-compose.yml, infra/ and .env.example.

The compose file is validated by Debian's ``docker-compose`` (1.29, Compose-spec schema, including
``deploy.resources.reservations.devices`` and ``service_completed_successfully``) against a temporary copy
of the project with ``.env`` copied from ``.env.example``; then the *resolved* configuration is checked
for what the deployment must guarantee. ``infra/minio/init.sh`` is run against a fake ``mc`` to check its
commands and that it is idempotent.

Needs the ``docker-compose`` command (``apt-get install -y docker-compose``); skipped without it. No Docker
daemon is needed.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml")

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
MULTI_GPU_FILE = REPO / "infra" / "compose.multi-gpu.yml"
CPU_FILE = REPO / "infra" / "compose.cpu.yml"
ENV_EXAMPLE = REPO / ".env.example"
INIT_SCRIPT = REPO / "infra" / "minio" / "init.sh"

INSTALL_HINT = "sudo apt-get update && sudo apt-get install -y docker-compose"
WEBHOOK_ENDPOINT = "http://api:8000/v1/events/s3"

APP_SERVICES = ["migrate", "api", "worker-gpu", "worker-training", "worker-cpu", "beat"]
LONG_RUNNING = [
    "postgres",
    "redis",
    "minio",
    "api",
    "worker-gpu",
    "worker-training",
    "worker-cpu",
    "beat",
    "flower",
]
REQUIRED = [*LONG_RUNNING, "minio-init", "migrate"]
SECRET_VARS = [
    "POSTGRES_PASSWORD",
    "REDIS_PASSWORD",
    "MINIO_ROOT_PASSWORD",
    "HEP2_S3_SECRET_ACCESS_KEY",
    "HEP2_SIGNING_KEY",
    "HEP2_WEBHOOK_TOKEN",
    "FLOWER_BASIC_AUTH",
]
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|SIGNING_KEY|BASIC_AUTH|_AUTH$", re.IGNORECASE)


def parse_env(text: str) -> dict[str, str]:
    values = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def read_env_example() -> dict[str, str]:
    return parse_env(ENV_EXAMPLE.read_text())


def filled_env_example() -> str:
    """.env.example with every secret filled in, as an operator must do before compose accepts it."""
    text = ENV_EXAMPLE.read_text()
    for var in SECRET_VARS:
        value = f"admin:{secrets.token_hex(16)}" if var == "FLOWER_BASIC_AUTH" else secrets.token_hex(32)
        text = re.sub(rf"(?m)^{var}=$", f"{var}={value}", text)
    return text


def clean_env() -> dict[str, str]:
    """The environment for docker-compose: the caller's variables would override .env in interpolation."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")
    return {k: v for k, v in os.environ.items() if k in keep}


@pytest.fixture(scope="module")
def docker_compose() -> str:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip(f"docker-compose not installed; install it with: {INSTALL_HINT}")
    return binary


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the deployment files with .env = .env.example with its secrets filled in (what an operator
    must do first)."""
    shutil.copy(COMPOSE_FILE, tmp_path / "docker-compose.yml")
    shutil.copytree(REPO / "infra", tmp_path / "infra")
    (tmp_path / ".env").write_text(filled_env_example())
    return tmp_path


def run_compose(binary: str, project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary, *args], cwd=project, env=clean_env(), capture_output=True, text=True, timeout=120)


def resolved(binary: str, project: Path, *files: str) -> dict[str, Any]:
    file_args = [arg for f in files for arg in ("-f", f)]
    result = run_compose(binary, project, *file_args, "config")
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@pytest.fixture
def config(docker_compose: str, project: Path) -> dict[str, Any]:
    return resolved(docker_compose, project)


# ------------------------------------------------------------------------------------------ validity


def test_compose_file_is_valid(docker_compose: str, project: Path) -> None:
    result = run_compose(docker_compose, project, "config", "--quiet")
    assert result.returncode == 0, result.stderr


def test_env_example_as_it_is_is_refused(docker_compose: str, project: Path) -> None:
    """Issue 17.4: `docker-compose config` accepted .env.example's placeholder secrets unchanged."""
    shutil.copy(ENV_EXAMPLE, project / ".env")
    result = run_compose(docker_compose, project, "config", "--quiet")
    assert result.returncode != 0
    assert re.search(r"set \w+ in \.env", result.stderr), result.stderr


@pytest.mark.parametrize("var", ["HEP2_SIGNING_KEY", "HEP2_WEBHOOK_TOKEN", "HEP2_S3_SECRET_ACCESS_KEY"])
def test_each_application_secret_is_required(docker_compose: str, project: Path, var: str) -> None:
    env = (project / ".env").read_text()
    (project / ".env").write_text(re.sub(rf"(?m)^{var}=.*$", f"{var}=", env))
    result = run_compose(docker_compose, project, "config", "--quiet")
    assert result.returncode != 0 and var in result.stderr


def test_published_ports_are_on_localhost_by_default(config: dict[str, Any]) -> None:
    """Issue 17.4: the API and MinIO were published on all interfaces over plain HTTP."""
    published = []
    for name, service in config["services"].items():
        for port in service.get("ports", []):
            host_ip = port.get("host_ip") if isinstance(port, dict) else (
                str(port).rsplit(":", 2)[0] if str(port).count(":") == 2 else None)
            published.append((name, host_ip))
    assert {name for name, _ in published} >= {"api", "minio", "flower"}
    assert all(ip == "127.0.0.1" for _, ip in published), published


def test_missing_secret_is_refused(docker_compose: str, project: Path) -> None:
    env = (project / ".env").read_text()
    (project / ".env").write_text(re.sub(r"(?m)^POSTGRES_PASSWORD=.*\n", "", env))
    result = run_compose(docker_compose, project, "config", "--quiet")
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr


def test_multi_gpu_overlay(docker_compose: str, project: Path) -> None:
    config = resolved(docker_compose, project, "docker-compose.yml", "infra/compose.multi-gpu.yml")
    services = config["services"]
    base = services["worker-gpu"]
    gpus = {}
    for name in ("worker-gpu", "worker-gpu-1", "worker-gpu-2", "worker-gpu-3"):
        svc = services[name]
        (device,) = svc["deploy"]["resources"]["reservations"]["devices"]
        gpus[name] = tuple(device["device_ids"])
        assert svc["command"] == ["hep2", "worker", "-Q", "gpu", "-c", "1"]
        assert svc["environment"] == base["environment"], f"{name} drifted from x-hep2 in docker-compose.yml"
        assert svc["depends_on"] == base["depends_on"]
        assert "healthcheck" in svc
    assert len(set(gpus.values())) == len(gpus), f"two workers on one GPU: {gpus}"


def test_cpu_overlay(docker_compose: str, project: Path) -> None:
    """A host without a GPU: analysis and training workers without a GPU reservation; analysis with the
    worker's CPU default (one single-threaded process per core: no -c)."""
    config = resolved(docker_compose, project, "docker-compose.yml", "infra/compose.cpu.yml")
    services = config["services"]
    base = services["worker-gpu"]
    analysis, training = services["worker-analysis-cpu"], services["worker-training-cpu"]
    assert analysis["command"] == ["hep2", "worker", "-Q", "gpu"]
    assert training["command"] == ["hep2", "worker", "-Q", "training", "-c", "1"]
    for name, svc in (("worker-analysis-cpu", analysis), ("worker-training-cpu", training)):
        assert "deploy" not in svc, f"{name} must not reserve a GPU"
        assert svc["environment"] == base["environment"], f"{name} drifted from x-hep2 in docker-compose.yml"
        assert svc["depends_on"] == base["depends_on"]
        assert "healthcheck" in svc


# ------------------------------------------------------------------------------------------ structure


def test_required_services(config: dict[str, Any]) -> None:
    missing = set(REQUIRED) - set(config["services"])
    assert not missing, f"services missing from docker-compose.yml: {sorted(missing)}"


def test_healthchecks_on_long_running_services(config: dict[str, Any]) -> None:
    for name in LONG_RUNNING:
        check = config["services"][name].get("healthcheck")
        assert check and not check.get("disable") and check.get("test"), f"{name} has no healthcheck"
        assert config["services"][name].get("restart") == "unless-stopped", name
    tests = {name: " ".join(config["services"][name]["healthcheck"]["test"]) for name in LONG_RUNNING}
    assert "pg_isready" in tests["postgres"]
    assert "redis-cli ping" in tests["redis"]
    assert "/health/live" in tests["api"]
    for worker in ("worker-gpu", "worker-training", "worker-cpu"):
        assert "inspect ping" in tests[worker]


def test_gpu_reservation(config: dict[str, Any]) -> None:
    for name in ("worker-gpu", "worker-training"):
        devices = config["services"][name]["deploy"]["resources"]["reservations"]["devices"]
        assert len(devices) == 1
        device = devices[0]
        assert device["driver"] == "nvidia"
        assert "gpu" in device["capabilities"]
        assert device.get("count") == 1 or len(device.get("device_ids", [])) == 1
    for name in ("api", "worker-cpu", "beat", "migrate"):
        assert "deploy" not in config["services"][name], f"{name} should not reserve a GPU"


def test_commands_and_queues(config: dict[str, Any]) -> None:
    services = config["services"]
    assert services["migrate"]["command"] == ["hep2", "db", "upgrade"]
    assert services["api"]["command"][:2] == ["hep2", "api"]
    assert services["worker-gpu"]["command"] == ["hep2", "worker", "-Q", "gpu", "-c", "1"]
    assert services["worker-training"]["command"][:4] == ["hep2", "worker", "-Q", "training"]
    assert services["worker-cpu"]["command"][:4] == ["hep2", "worker", "-Q", "cpu,lis"]
    assert services["beat"]["command"] == ["hep2", "beat"]
    consumed = {
        q for name in ("worker-gpu", "worker-training", "worker-cpu") for q in services[name]["command"][3].split(",")
    }
    assert consumed == {"gpu", "cpu", "training", "lis"}


def test_start_order(config: dict[str, Any]) -> None:
    services = config["services"]
    for name in APP_SERVICES:
        deps = services[name]["depends_on"]
        assert deps["postgres"]["condition"] == "service_healthy", name
        if name == "migrate":
            continue
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
        assert deps["minio-init"]["condition"] == "service_completed_successfully", name
        assert deps["redis"]["condition"] == "service_healthy", name
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"
    for one_shot in ("migrate", "minio-init"):
        assert services[one_shot].get("restart", "no") == "no"


def test_named_volumes(config: dict[str, Any]) -> None:
    services = config["services"]
    assert {"pgdata", "redisdata", "miniodata", "minioevents"} <= set(config["volumes"])

    def mounts(name: str) -> dict[str, str]:
        out = {}
        for volume in services[name].get("volumes", []):
            if isinstance(volume, str):
                source, target = volume.split(":")[:2]
            else:
                source, target = volume["source"], volume["target"]
            out[target] = source
        return out

    assert mounts("postgres")["/var/lib/postgresql/data"] == "pgdata"
    assert mounts("redis")["/data"] == "redisdata"
    assert mounts("minio")["/data"] == "miniodata"
    assert mounts("minio")["/var/lib/minio-events"] == "minioevents"


def test_redis_is_durable(config: dict[str, Any]) -> None:
    command = config["services"]["redis"]["command"]
    command = command if isinstance(command, list) else command.split()
    assert command[command.index("--appendonly") + 1] == "yes"


def test_app_services_get_settings_from_env_file(config: dict[str, Any], project: Path) -> None:
    example = parse_env((project / ".env").read_text())
    for name in APP_SERVICES:
        svc = config["services"][name]
        env = svc["environment"]
        assert svc["image"].startswith("hep2:"), name
        assert svc["build"]["dockerfile"] == "infra/Dockerfile", name
        assert env["HEP2_STORAGE_BACKEND"] == "s3"
        assert env["HEP2_S3_ENDPOINT_URL"] == "http://minio:9000"
        assert env["HEP2_DATABASE_URL"].startswith("postgresql+psycopg://hep2:")
        assert env["HEP2_DATABASE_URL"].endswith("@postgres:5432/hep2")
        assert env["HEP2_BROKER_URL"].startswith("redis://:") and "@redis:6379/" in env["HEP2_BROKER_URL"]
        for key in (
            "HEP2_SIGNING_KEY",
            "HEP2_WEBHOOK_TOKEN",
            "HEP2_S3_ACCESS_KEY_ID",
            "HEP2_S3_SECRET_ACCESS_KEY",
            "HEP2_S3_BUCKET",
        ):
            assert env[key] == example[key], f"{name}: {key} does not come from .env"
        # the application never holds the MinIO root account
        assert env.get("MINIO_ROOT_PASSWORD", "") == "" and env.get("MINIO_ROOT_USER", "") == ""


def test_flower(config: dict[str, Any]) -> None:
    flower = config["services"]["flower"]
    assert "flower" in flower["image"]
    assert flower["environment"]["CELERY_BROKER_URL"] == config["services"]["api"]["environment"]["HEP2_BROKER_URL"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"]

    def target(port: Any) -> int:  # long syntax, or "127.0.0.1:5555:5555/tcp" (compose 1.29 output)
        return int(port["target"]) if isinstance(port, dict) else int(str(port).split("/")[0].rsplit(":", 1)[-1])

    assert 5555 in [target(port) for port in flower["ports"]]


# ------------------------------------------------------------------------------------------ secrets


def _walk_env(node: Any, path: str = "") -> list[tuple[str, str, Any]]:
    """(path, key, value) of every mapping entry of the raw YAML."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            found.append((path, str(key), value))
            found.extend(_walk_env(value, f"{path}/{key}"))
    elif isinstance(node, list):
        for i, item in enumerate(node):
            if isinstance(item, str) and "=" in item and path.endswith("environment"):
                key, _, value = item.partition("=")
                found.append((path, key, value))
            found.extend(_walk_env(item, f"{path}[{i}]"))
    return found


@pytest.mark.parametrize("path", [COMPOSE_FILE, MULTI_GPU_FILE, CPU_FILE], ids=lambda p: p.name)
def test_no_literal_secrets(path: Path) -> None:
    text = path.read_text()
    raw = yaml.safe_load(text)
    for where, key, value in _walk_env(raw):
        if SECRET_NAME.search(key) and isinstance(value, str | int | float) and value != "":
            assert "${" in str(value), f"{path.name}{where}/{key} holds a literal secret: {value!r}"
    for where, key, value in _walk_env(raw):
        if isinstance(value, str) and re.search(r"://[^/\s:@]*:[^/\s@]+@", value):
            assert "${" in value, f"{path.name}{where}/{key}: credentials in a URL must be interpolated"
    example = read_env_example()
    for var in SECRET_VARS:
        assert example[var] == "", f".env.example must leave {var} empty (a placeholder would be accepted)"


def test_env_example_documents_every_variable() -> None:
    documented = ENV_EXAMPLE.read_text()
    used = set()
    for path in (COMPOSE_FILE, MULTI_GPU_FILE, CPU_FILE):
        code = "\n".join(ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#"))
        used |= set(re.findall(r"\$\{([A-Z0-9_]+)", code))
    undocumented = sorted(v for v in used if not re.search(rf"(?m)^#?\s*{v}=", documented))
    assert not undocumented, f"variables used by the compose files but not in .env.example: {undocumented}"
    example = read_env_example()
    for var in [
        *SECRET_VARS,
        "HEP2_S3_BUCKET",
        "HEP2_S3_REGION",
        "HEP2_S3_ACCESS_KEY_ID",
        "HEP2_INBOX_PREFIX",
        "MINIO_ROOT_USER",
    ]:
        assert var in example, var
    for var in SECRET_VARS:
        assert re.search(rf"(?m)^# REQUIRED.*\n{var}=$", documented), f"{var} in .env.example: REQUIRED, empty"


def test_dockerfile_runs_as_non_root_and_ignores_secrets() -> None:
    dockerfile = (REPO / "infra" / "Dockerfile").read_text()
    assert re.search(r"(?m)^FROM .*python:3\.11-slim", dockerfile) or "python:3.11-slim" in dockerfile
    user_lines = re.findall(r"(?m)^USER\s+(\S+)", dockerfile)
    assert user_lines and not user_lines[-1].startswith(("root", "0")), "the image must not run as root"
    assert "pip install" in dockerfile
    ignored = (REPO / ".dockerignore").read_text().split()
    for pattern in (".git", ".venv", "var/", ".env", "tests/"):
        assert pattern in ignored, f".dockerignore should exclude {pattern}"


# ------------------------------------------------------------------------------------------ MinIO init


def test_webhook_wiring(config: dict[str, Any]) -> None:
    init = config["services"]["minio-init"]
    env = init["environment"]
    assert env["WEBHOOK_ENDPOINT"] == WEBHOOK_ENDPOINT
    api_env = config["services"]["api"]["environment"]
    assert env["HEP2_WEBHOOK_TOKEN"] == api_env["HEP2_WEBHOOK_TOKEN"], "MinIO and the API disagree on the token"
    assert env["HEP2_INBOX_PREFIX"] == api_env["HEP2_INBOX_PREFIX"]
    assert env["HEP2_S3_BUCKET"] == api_env["HEP2_S3_BUCKET"]
    assert env["WEBHOOK_QUEUE_DIR"] in {
        (v.split(":")[1] if isinstance(v, str) else v["target"]) for v in config["services"]["minio"]["volumes"]
    }, "the webhook queue_dir must be on a volume of the minio service"
    assert any(
        str(INIT_SCRIPT.relative_to(REPO)) in (v if isinstance(v, str) else v["source"]) for v in init["volumes"]
    )

    script = INIT_SCRIPT.read_text()
    assert "notify_webhook:" in script
    for needle in (
        'endpoint="$WEBHOOK_ENDPOINT"',
        'auth_token="$HEP2_WEBHOOK_TOKEN"',
        "queue_dir=",
        "mc admin service restart",
        "mc event add",
        "arn:minio:sqs::",
        "--event put",
        '--prefix "$HEP2_INBOX_PREFIX"',
        "mc mb --ignore-existing",
    ):
        assert needle in script, needle


FAKE_MC = r"""#!/bin/sh
# Fake `mc`: logs its arguments, keeps the bucket notification and policy attachments in $FAKE_MC_STATE.
echo "$*" >>"$FAKE_MC_LOG"
while [ $# -gt 0 ]; do case "$1" in --json|--no-color|--quiet) shift ;; *) break ;; esac; done
case "$1 $2" in
  "event ls")
    [ -f "$FAKE_MC_STATE/event" ] && cat "$FAKE_MC_STATE/event"
    exit 0 ;;
  "event add")
    printf '{"status": "success", "id": "", "event": ["s3:ObjectCreated:*"], "prefix": "%s", "arn": "%s"}\n' \
      "$8" "$4" >"$FAKE_MC_STATE/event"
    exit 0 ;;
  "event rm")
    rm -f "$FAKE_MC_STATE/event"
    exit 0 ;;
esac
if [ "$1 $2 $3" = "admin policy attach" ]; then
  if [ -f "$FAKE_MC_STATE/attached-$5-$7" ]; then
    echo "mc: <ERROR> Unable to attach the policy. The specified policy change is already in effect." >&2
    exit 1
  fi
  touch "$FAKE_MC_STATE/attached-$5-$7"
fi
exit 0
"""


@pytest.fixture
def fake_mc(tmp_path: Path) -> dict[str, str]:
    if shutil.which("sh") is None:
        pytest.skip("no POSIX sh")
    bin_dir = tmp_path / "bin"
    state = tmp_path / "state"
    bin_dir.mkdir()
    state.mkdir()
    mc = bin_dir / "mc"
    mc.write_text(FAKE_MC)
    mc.chmod(mc.stat().st_mode | stat.S_IXUSR)
    return {
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "FAKE_MC_LOG": str(tmp_path / "mc.log"),
        "FAKE_MC_STATE": str(state),
        "MC_CONFIG_DIR": str(tmp_path / "mc-config"),
        "MINIO_URL": "http://minio:9000",
        "MINIO_ROOT_USER": "root-user",
        "MINIO_ROOT_PASSWORD": "root-password",
        "HEP2_S3_BUCKET": "hep2",
        "HEP2_INBOX_PREFIX": "inbox/",
        "HEP2_S3_ACCESS_KEY_ID": "hep2-app",
        "HEP2_S3_SECRET_ACCESS_KEY": "app-secret",
        "HEP2_WEBHOOK_TOKEN": "tok3n",
        "WEBHOOK_ENDPOINT": WEBHOOK_ENDPOINT,
        "WEBHOOK_QUEUE_DIR": "/var/lib/minio-events",
    }


def run_init(env: dict[str, str], **overrides: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    log = Path(env["FAKE_MC_LOG"])
    log.unlink(missing_ok=True)
    result = subprocess.run(
        ["sh", str(INIT_SCRIPT)], env={**env, **overrides}, capture_output=True, text=True, timeout=120
    )
    calls = log.read_text().splitlines() if log.exists() else []
    return result, calls


def test_init_script_configures_bucket_and_webhook(fake_mc: dict[str, str]) -> None:
    result, calls = run_init(fake_mc)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "alias set hep2 http://minio:9000 root-user root-password" in calls
    assert "mb --ignore-existing hep2/hep2" in calls
    assert "admin user add hep2 hep2-app app-secret" in calls
    assert "admin policy attach hep2 hep2-app --user hep2-app" in calls
    config_set = [c for c in calls if c.startswith("admin config set hep2 notify_webhook:hep2 ")]
    assert config_set == [
        f"admin config set hep2 notify_webhook:hep2 endpoint={WEBHOOK_ENDPOINT} auth_token=tok3n "
        "queue_dir=/var/lib/minio-events queue_limit=100000"
    ]
    restart = calls.index("admin service restart hep2")
    add = calls.index("event add hep2/hep2 arn:minio:sqs::hep2:webhook --event put --prefix inbox/")
    assert calls.index(config_set[0]) < restart < add


def test_init_script_is_idempotent(fake_mc: dict[str, str]) -> None:
    first, _ = run_init(fake_mc)
    assert first.returncode == 0, first.stderr
    second, calls = run_init(fake_mc)
    assert second.returncode == 0, second.stderr + second.stdout
    assert not [c for c in calls if c.startswith("event add")], "the bucket event was added twice"
    assert "already configured" in second.stdout

    # a changed inbox prefix replaces the rule instead of adding an overlapping one
    third, calls = run_init(fake_mc, HEP2_INBOX_PREFIX="uploads/")
    assert third.returncode == 0, third.stderr
    assert calls.index("event rm hep2/hep2 arn:minio:sqs::hep2:webhook") < calls.index(
        "event add hep2/hep2 arn:minio:sqs::hep2:webhook --event put --prefix uploads/"
    )


def test_init_script_refuses_bad_token(fake_mc: dict[str, str]) -> None:
    result, calls = run_init(fake_mc, HEP2_WEBHOOK_TOKEN="two words")
    assert result.returncode != 0
    assert not calls
    env = {k: v for k, v in fake_mc.items() if k != "HEP2_WEBHOOK_TOKEN"}
    result, calls = run_init(env)
    assert result.returncode != 0 and "HEP2_WEBHOOK_TOKEN" in result.stderr
