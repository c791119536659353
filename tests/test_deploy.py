"""The deploy files (Dockerfile, compose.yaml, deploy/*.env.example) stay in step with the code.

Fast and offline: no image is built and no container runs (base images cannot be pulled here). The
schema check and hadolint run in `make lint-deploy`; this checks what they cannot know: that the
roles are the Procfile's and real CLI commands, that every setting named exists, that no secret is
written inline, and that the vLLM service can serve what the worker trains."""
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from bot import cli, config
from bot.llm import presets

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
SERVICES = COMPOSE["services"]
DOCKERFILE = (ROOT / "Dockerfile").read_text(encoding="utf-8")
SETTINGS = {s.name: s for s in config.SETTINGS}
# Variables a bot container reads that are not the bot's settings, each for a named reason.
NOT_SETTINGS = {"PGPASSWORD": "libpq's password for BOT_DB", "POSTGRES_PASSWORD": "the postgres image's"}


def _instruction(name: str) -> list[str]:
    """The JSON (exec) form of the Dockerfile's last `name` instruction."""
    lines = [line for line in DOCKERFILE.splitlines() if line.startswith(name + " ")]
    assert lines, f"the Dockerfile has no {name}"
    return json.loads(lines[-1][len(name) + 1:])


def _bot_services() -> dict:
    """The services that run the bot's image (the rest are the engines)."""
    return {name: s for name, s in SERVICES.items() if str(s.get("image", "")).startswith("kb-bot")}


def _env_files(service: dict) -> list[Path]:
    files = service.get("env_file", [])
    return [ROOT / (f if isinstance(f, str) else f["path"]) for f in ([files] if isinstance(files, str) else files)]


def _example_keys(path: Path) -> set[str]:
    example = path.with_name(path.name + ".example")
    assert example.is_file(), f"{path.relative_to(ROOT)} has no checked-in example"
    return {line.split("=", 1)[0].strip() for line in example.read_text(encoding="utf-8").splitlines()
            if "=" in line and not line.lstrip().startswith("#")}


def _parses(argv: list[str]) -> bool:
    try:
        cli.parser().parse_args(argv)
    except SystemExit:
        return False
    return True


def test_the_image_runs_the_cli_and_its_default_role_is_a_command():
    assert _instruction("ENTRYPOINT") == ["python", "-m", "bot"]
    cmd = _instruction("CMD")
    commands = next(a for a in cli.parser()._actions if a.dest == "command").choices
    assert cmd[0] in commands and _parses(cmd), cmd
    assert re.search(r"^USER (?!root\b|0\b)\S+", DOCKERFILE, re.M), "the image must run as a non-root user"


def test_every_procfile_process_is_a_compose_service_running_the_same_command():
    procfile = dict(line.split(":", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line.strip())
    bots = _bot_services()
    for name, command in procfile.items():
        argv = shlex.split(command)
        assert argv[:3] == ["python", "-m", "bot"], command
        assert name in bots, f"the Procfile's {name!r} has no service in compose.yaml"
        assert bots[name]["command"] == argv[3:], (name, bots[name]["command"], argv[3:])


def test_every_bot_service_runs_a_real_command():
    for name, service in _bot_services().items():
        assert _parses(service["command"]), f"{name}: {service['command']} is not a command `python -m bot` takes"


def test_every_variable_given_to_the_bot_is_a_setting_and_no_secret_is_inline():
    for name, service in _bot_services().items():
        inline = service.get("environment", {})
        assert isinstance(inline, dict), f"{name}: write environment as a mapping"
        from_files = set().union(*(_example_keys(f) for f in _env_files(service)))
        unknown = (set(inline) | from_files) - set(SETTINGS) - set(NOT_SETTINGS)
        assert not unknown, f"{name}: not settings in bot/config.py: {sorted(unknown)}"
        for key, value in inline.items():
            # A secret setting may be written here only as a URL without credentials (Redis in the project's
            # network); tokens and passwords come from the env files.
            if key in SETTINGS and SETTINGS[key].kind == "secret":
                assert re.fullmatch(r"\w+://[^@/\s]+(/\S*)?", str(value)), f"{name}: {key} is a secret: put it in an env file"
            assert not re.search(r"://[^/@\s]*:[^/@\s]*@", str(value)), f"{name}: {key} carries a password inline"
            assert key not in NOT_SETTINGS, f"{name}: {key} belongs in an env file"


def test_discord_runs_in_exactly_one_replica_and_only_it_gets_the_token():
    holders = [name for name, s in _bot_services().items()
               if "DISCORD_TOKEN" in set().union(*(_example_keys(f) for f in _env_files(s))) | set(s.get("environment", {}))]
    assert holders == ["discord"], holders
    assert SERVICES["discord"]["deploy"]["replicas"] == 1
    assert SERVICES["discord"]["command"] == ["serve"]
    assert SERVICES["web"]["command"] == ["serve"]


def test_serve_services_check_healthz_on_their_port():
    for name, service in _bot_services().items():
        if service["command"][0] != "serve":
            continue
        port = service["environment"].get("PORT", SETTINGS["PORT"].default)
        assert f"http://127.0.0.1:{port}/healthz" in " ".join(service["healthcheck"]["test"]), name


def _flag(argv: list[str], name: str) -> str:
    assert name in argv, f"vllm is not started with {name}"
    return argv[argv.index(name) + 1]


def test_vllm_serves_what_the_worker_trains_from_the_shared_adapters_volume():
    vllm, worker = SERVICES["vllm"], SERVICES["worker"]
    assert vllm["image"].startswith("vllm/vllm-openai:")
    argv = vllm["command"]
    assert "--enable-lora" in argv and _flag(argv, "--quantization") == "bitsandbytes"
    preset = presets.load(worker["environment"]["BOT_MODEL"])
    # The resolver accepts an adapter only when its base_model_name_or_path (the hub id the worker
    # trained on) equals --model; a --served-model-name would not match it.
    assert _flag(argv, "--model") == preset.hub_id and _flag(argv, "--revision") == preset.revision
    assert "--served-model-name" not in argv
    assert int(_flag(argv, "--max-lora-rank")) >= preset.lora.r
    for name in ("web", "discord"):
        assert SERVICES[name]["environment"]["BOT_MODEL"] == worker["environment"]["BOT_MODEL"]
        assert SERVICES[name]["environment"]["BOT_LLM_URL"].startswith("http://vllm:")

    env = vllm["environment"]
    assert "lora_filesystem_resolver" in env["VLLM_PLUGINS"].split(",")
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "true"  # the resolver is consulted only with it on

    def volume_at(service, target):
        for v in service["volumes"]:
            source, dest = v.split(":")[:2]
            if dest == target:
                return source
        pytest.fail(f"nothing is mounted at {target}")

    shared = volume_at(worker, worker["environment"]["BOT_ADAPTERS_DIR"])
    assert shared in COMPOSE["volumes"], "the adapters must be a named volume both services mount"
    assert volume_at(vllm, env["VLLM_LORA_RESOLVER_CACHE_DIR"]) == shared


def test_gpu_services_reserve_different_gpus():
    ids = {}
    for name in ("worker", "vllm"):
        (device,) = SERVICES[name]["deploy"]["resources"]["reservations"]["devices"]
        assert "gpu" in device["capabilities"]
        ids[name] = device["device_ids"]
    assert ids["worker"] != ids["vllm"]  # the defaults; one GPU for both is a choice the README explains
