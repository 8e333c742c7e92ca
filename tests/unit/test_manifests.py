"""Manifest parsing: the demo, Deployments, Services, namespaces, and located errors."""

from __future__ import annotations

import re

import pytest

from workbench.errors import ValidationError
from workbench.lab.manifests import DEMO_MANIFEST, LabSpec, image_app, parse_manifests, read_manifest_files

DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: nginx:1.27
        ports:
        - containerPort: 8080
          name: http
"""


def parse(text: str) -> LabSpec:
    return parse_manifests([("test.yaml", text)])


def test_demo_has_two_deathstars_two_ships_and_a_service() -> None:
    spec = parse_manifests([DEMO_MANIFEST.read_text()])
    apps = sorted((p.owner or p.name, p.app) for p in spec.pods)
    assert apps == [("deathstar", "deathstar"), ("deathstar", "deathstar"), ("tiefighter", "idle"),
                    ("xwing", "idle")]
    deathstars = [p for p in spec.pods if p.owner == "deathstar"]
    assert {p.labels["org"] for p in deathstars} == {"empire"}
    assert all(p.ports[0].port == 80 for p in deathstars)
    (svc,) = spec.services
    assert (svc.name, svc.selector, svc.ports[0].port) == ("deathstar", {"org": "empire", "class": "deathstar"}, 80)
    assert spec.warnings == []


def test_deployment_replicas_get_kubernetes_style_names() -> None:
    spec = parse(DEPLOYMENT)
    names = [p.name for p in spec.pods]
    assert len(names) == len(set(names)) == 3
    for name in names:
        base, template_hash, suffix = name.rsplit("-", 2)
        assert base == "web" and len(template_hash) == 10 and len(suffix) == 5
    assert len({n.rsplit("-", 1)[0] for n in names}) == 1     # one template hash
    assert names == [p.name for p in parse(DEPLOYMENT).pods]  # deterministic
    assert all(p.app == "echo" and p.namespace == "shop" and p.owner == "web" for p in spec.pods)


def test_undeclared_namespace_is_created_with_the_metadata_name_label() -> None:
    spec = parse(DEPLOYMENT)
    assert spec.namespaces["shop"] == {"kubernetes.io/metadata.name": "shop"}
    assert any("namespace shop is not declared" in w for w in spec.warnings)


def test_declared_namespace_keeps_its_labels() -> None:
    spec = parse("apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {team: a}}\n---\n" + DEPLOYMENT)
    assert spec.namespaces["shop"] == {"team": "a", "kubernetes.io/metadata.name": "shop"}


@pytest.mark.parametrize(("image", "ports", "app"), [
    ("docker.io/cilium/starwars", [], "deathstar"),
    ("docker.io/cilium/starwars:v2.1@sha256:abc", [], "deathstar"),
    ("quay.io/cilium/starwars:latest", [1], "deathstar"),
    ("docker.io/tgraf/netperf", [], "idle"),
    ("localhost:5000/nginx:1", [1], "echo"),
])
def test_images_map_to_built_in_apps(image: str, ports: list[int], app: str) -> None:
    from workbench.lab.manifests import ContainerPort

    assert image_app(image, [ContainerPort(p) for p in ports]) == app


def test_service_named_target_port_and_protocols() -> None:
    spec = parse("""
apiVersion: v1
kind: Service
metadata: {name: dns}
spec:
  selector: {app: dns}
  ports:
  - {name: udp, port: 53, protocol: UDP, targetPort: dns}
  - {name: tcp, port: 53, targetPort: 5353}
""")
    (svc,) = spec.services
    assert [(p.port, p.target_port, p.protocol) for p in svc.ports] == [(53, "dns", "UDP"), (53, 5353, "TCP")]


@pytest.mark.parametrize(("text", "message"), [
    (DEPLOYMENT.replace("containerPort: 8080", "containerPort: eighty"),
     "test.yaml document 0 (Deployment/web): spec.template.spec.containers[0].ports[0].containerPort: "
     "must be an integer 1-65535, got 'eighty'"),
    (DEPLOYMENT.replace("replicas: 3", "replicas: -1"), "(Deployment/web): spec.replicas: must be an integer"),
    (DEPLOYMENT.replace("matchLabels: {app: web}", "matchLabels: {app: api}"),
     "spec.template.metadata.labels: does not match spec.selector.matchLabels (app=api)"),
    (DEPLOYMENT.replace("image: nginx:1.27", "image: ''"), "spec.template.spec.containers[0].image: must be"),
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: Bad_Name}\nspec: {containers: [{name: a, image: b}]}\n",
     "(Pod/Bad_Name): metadata.name: 'Bad_Name' is not a valid RFC 1123 label"),
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: []}\n",
     "(Pod/a): spec.containers: must list at least one container"),
    ("apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 80, protocol: SCTP}]}\n",
     "(Service/s): spec.ports[0].protocol: must be TCP or UDP, got 'SCTP'"),
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: a, labels: {x: [1]}}\nspec: {containers: [{name: a, image: b}]}\n",
     "(Pod/a): metadata.labels.x: label values must be strings"),
    ("kind: Pod\nmetadata: {name: a}\n", "(Pod/a): apiVersion: missing"),
    ("- just\n- a list\n", "test.yaml document 0: must be a mapping"),
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: a\n", "test.yaml at line"),
])
def test_invalid_manifests_name_document_and_field_path(text: str, message: str) -> None:
    with pytest.raises(ValidationError) as err:
        parse(text)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_error_names_the_right_document_index() -> None:
    bad = DEPLOYMENT.replace("containerPort: 8080", "containerPort: 0")
    with pytest.raises(ValidationError, match=r"test.yaml document 1 \(Deployment/web\)"):
        parse("apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\n" + bad)


def test_duplicate_pod_names_are_refused() -> None:
    pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: %s}\nspec: {containers: [{name: a, image: b}]}\n"
    with pytest.raises(ValidationError, match="pod name a is used twice"):
        parse(pod % "x" + "---\n" + pod % "y")


def test_unknown_kinds_and_fields_are_skipped_with_warnings() -> None:
    spec = parse("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n---\n"
                 "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: a, image: b, "
                 "frobnicate: 1}]}\nextra: 2\n")
    assert [p.name for p in spec.pods] == ["a"]
    assert any("v1/ConfigMap is not supported by the lab, skipped" in w for w in spec.warnings)
    assert any("spec.containers[0].frobnicate: unknown field ignored" in w for w in spec.warnings)
    assert any("(Pod/a): extra: unknown field ignored" in w for w in spec.warnings)


def test_spec_round_trips_through_json() -> None:
    import json

    spec = parse(DEPLOYMENT)
    again = LabSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec


@pytest.mark.parametrize("text, message", [
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: " + "a" * 64 + "}\nspec: {containers: [{name: a, image: b}]}\n",
     "metadata.name: '" + "a" * 64 + "' is not a valid RFC 1123 label"),
    ("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: " + "d" * 47 + "}\nspec: {selector: {matchLabels: "
     "{a: b}}, template: {metadata: {labels: {a: b}}, spec: {containers: [{name: a, image: b}]}}}\n",
     "a Deployment name may have 46"),
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {hostNetwork: true, containers: [{name: a, image: b}]}\n",
     "spec.hostNetwork: true is not supported"),
    ("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec: {selector: {matchLabels: {a: b}}, "
     "template: {metadata: {labels: {a: b}}, spec: {hostNetwork: true, containers: [{name: a, image: b}]}}}\n",
     "spec.template.spec.hostNetwork: true is not supported"),
])
def test_names_that_are_no_dns_labels_and_host_network_are_refused(text, message):
    with pytest.raises(ValidationError, match=re.escape(message)):
        parse_manifests([("test.yaml", text)])


def test_binary_and_bomb_manifest_files_get_one_line(tmp_path):
    binary = tmp_path / "image.yaml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00")
    with pytest.raises(ValidationError, match=r"^image.yaml: binary data, not YAML \(a NUL byte at offset 8\)$"):
        read_manifest_files([binary])
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"kind: Pod\nname: caf\xe9\n")
    with pytest.raises(ValidationError, match=r"^latin.yaml: not UTF-8 text"):
        read_manifest_files([latin])
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB)
    with pytest.raises(ValidationError, match=r"^bomb.yaml document 1: excessive aliasing") as err:
        read_manifest_files([bomb])
    assert "\n" not in str(err.value)


BOMB = "".join(f"{chr(97 + i)}: &{chr(97 + i)} [" + ",".join([f"*{chr(96 + i)}" if i else '"lol"'] * 9) + "]\n"
               for i in range(8))
