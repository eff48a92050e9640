"""ambientctl waypoint generate|apply|list|status|delete through Typer's CliRunner on a real store."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import Result

from ambientctl import testing
from ambientctl.commands import waypoint as wp
from ambientctl.testing import aged, table
from meshcore.store import Resource, ResourceRef, SqliteStore, build_resource, store_path

GW_API = "gateway.networking.k8s.io/v1"
PROGRAMMED_MESSAGE = "Resource programmed, assigned to service(s) waypoint.shop.svc.cluster.local:15008"
PROGRAMMED_STATUS: dict[str, Any] = {
    "addresses": [{"type": "IPAddress", "value": "10.96.0.50"}],
    "conditions": [
        {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "Resource accepted"},
        {"type": "Programmed", "status": "True", "reason": "Programmed", "message": PROGRAMMED_MESSAGE},
    ],
}
NOT_PROGRAMMED_STATUS: dict[str, Any] = {
    "conditions": [
        {"type": "Accepted", "status": "True", "reason": "Accepted"},
        {"type": "Programmed", "status": "False", "reason": "NoResources", "message": "Deployment not ready"},
    ],
}


class Ctl(testing.Ctl):
    """Runs ambientctl against one state directory and reads its store."""

    def fails(self, *args: str) -> Result:
        """Exit code 1 with one ``error:`` line last on stderr (no traceback)."""
        result = self(*args)
        assert result.exit_code == 1, (result.stdout, result.stderr, result.exception)
        assert result.exception is None or isinstance(result.exception, SystemExit)
        assert result.stderr.strip().splitlines()[-1].startswith("error: "), result.stderr
        assert "Traceback" not in result.stderr
        return result

    def store(self) -> SqliteStore:
        return SqliteStore(store_path(self.state_dir))

    def get(self, kind: str, namespace: str, name: str) -> Resource | None:
        with self.store() as store:
            return store.get(ResourceRef(kind, namespace, name))

    def put(self, *docs: dict[str, Any]) -> None:
        with self.store() as store:
            store.apply([build_resource(d) for d in docs])

    def set_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """What istiod_lite's waypoint controller does: write the Gateway's status."""
        with self.store() as store:
            gw = store.get(ResourceRef("Gateway", namespace, name))
            assert gw is not None
            store.apply([msgspec.structs.replace(gw, status=status)])


@pytest.fixture
def ctl(tmp_path: Path) -> Ctl:
    return Ctl(tmp_path)


def namespace(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def gateway(name: str, ns: str = "shop", *, cls: str = "istio-waypoint", **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": GW_API,
        "kind": "Gateway",
        "metadata": {"name": name, "namespace": ns, **meta},
        "spec": {
            "gatewayClassName": cls,
            "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
        },
    }


# --- generate -----------------------------------------------------------------------------------------


def test_generate_prints_istioctls_gateway_without_a_namespace_when_none_is_given(ctl: Ctl) -> None:
    assert ctl.succeeds("waypoint", "generate").stdout == (
        "apiVersion: gateway.networking.k8s.io/v1\n"
        "kind: Gateway\n"
        "metadata:\n"
        "  name: waypoint\n"
        "spec:\n"
        "  gatewayClassName: istio-waypoint\n"
        "  listeners:\n"
        "  - name: mesh\n"
        "    port: 15008\n"
        "    protocol: HBONE\n"
    )


def test_generate_per_service_account_names_the_waypoint_sa_waypoint_and_annotates_it(ctl: Ctl) -> None:
    out = ctl.succeeds(
        "waypoint",
        "generate",
        "-n",
        "shop",
        "--service-account",
        "reviews",
        "--for",
        "workload",
        "-r",
        "canary",
    ).stdout
    assert out == (
        "apiVersion: gateway.networking.k8s.io/v1\n"
        "kind: Gateway\n"
        "metadata:\n"
        "  annotations:\n"
        "    istio.io/for-service-account: reviews\n"
        "  labels:\n"
        "    istio.io/rev: canary\n"
        "    istio.io/waypoint-for: workload\n"
        "  name: reviews-waypoint\n"
        "  namespace: shop\n"
        "spec:\n"
        "  gatewayClassName: istio-waypoint\n"
        "  listeners:\n"
        "  - name: mesh\n"
        "    port: 15008\n"
        "    protocol: HBONE\n"
    )


def test_generated_yaml_applies_and_equals_what_waypoint_apply_writes(ctl: Ctl, tmp_path: Path) -> None:
    generated = ctl.succeeds("waypoint", "generate", "-n", "shop", "--name", "wp", "--for", "all").stdout
    build_resource(yaml.safe_load(generated))  # the store's schema accepts it as it is
    ctl.put(namespace("shop"))  # apply refuses objects in a namespace that does not exist, as kubectl does
    ctl.succeeds("apply", "-f", "-", input=generated)
    by_file = ctl.get("Gateway", "shop", "wp")
    other = Ctl(tmp_path / "second")
    other.state_dir.mkdir()
    other.succeeds("waypoint", "apply", "-n", "shop", "--name", "wp", "--for", "all")
    by_command = other.get("Gateway", "shop", "wp")
    assert by_file is not None and by_command is not None
    assert (by_file.labels, by_file.annotations, by_file.spec) == (
        by_command.labels,
        by_command.annotations,
        by_command.spec,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--name", "none"), "'none' is a reserved value"),
        (("--name", "Way_Point"), "not a valid name"),
        (("--service-account", "svc.account"), "pass --name"),
        (("--service-account", "Bad SA", "--name", "wp"), "--service-account: service account"),
    ],
    ids=[
        "the name none is refused as reserved",
        "a name that cannot be a service name is refused",
        "a service account name that cannot name the waypoint asks for --name",
        "an invalid service account is refused even with --name",
    ],
)
@pytest.mark.parametrize("verb", ["generate", "apply"])
def test_bad_names_are_refused_and_nothing_is_written(
    ctl: Ctl, verb: str, args: tuple[str, ...], message: str
) -> None:
    result = ctl.fails("waypoint", verb, "-n", "shop", *args)
    assert message in result.stderr
    with ctl.store() as store:
        assert store.list("Gateway") == []


def test_an_unknown_traffic_type_is_a_usage_error_listing_the_choices(ctl: Ctl) -> None:
    result = ctl("waypoint", "generate", "--for", "everything")
    assert result.exit_code == 2
    assert "service" in result.stderr and "workload" in result.stderr and "'all'" in result.stderr


# --- apply --------------------------------------------------------------------------------------------


def test_apply_writes_the_gateway_and_says_so_as_istioctl_does(ctl: Ctl) -> None:
    result = ctl.succeeds("waypoint", "apply", "-n", "shop", "--for", "service")
    assert result.stdout == "✅ waypoint shop/waypoint applied\n"
    gw = ctl.get("Gateway", "shop", "waypoint")
    assert gw is not None
    assert gw.spec == {
        "gatewayClassName": "istio-waypoint",
        "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
    }
    assert gw.labels == {"istio.io/waypoint-for": "service"}
    assert gw.status == {}


def test_reapply_keeps_the_controllers_status_and_foreign_labels_and_drops_its_own_unset_ones(
    ctl: Ctl,
) -> None:
    ctl.succeeds("waypoint", "apply", "-n", "shop", "--for", "all", "-r", "canary")
    ctl.set_status("shop", "waypoint", PROGRAMMED_STATUS)
    with ctl.store() as store:
        store.set_labels(ResourceRef("Gateway", "shop", "waypoint"), {"team": "payments"}, [])
    ctl.succeeds("waypoint", "apply", "-n", "shop")
    gw = ctl.get("Gateway", "shop", "waypoint")
    assert gw is not None
    assert gw.labels == {"team": "payments"}
    assert gw.status == PROGRAMMED_STATUS


def test_apply_refuses_to_turn_another_gateway_into_a_waypoint(ctl: Ctl) -> None:
    ctl.put(gateway("ingress", cls="istio"))
    result = ctl.fails("waypoint", "apply", "-n", "shop", "--name", "ingress")
    assert "gateway shop/ingress exists and is not a waypoint" in result.stderr
    gw = ctl.get("Gateway", "shop", "ingress")
    assert gw is not None and gw.spec["gatewayClassName"] == "istio"


def test_a_second_waypoint_for_one_service_account_is_refused(ctl: Ctl) -> None:
    ctl.succeeds("waypoint", "apply", "-n", "shop", "--service-account", "reviews")
    result = ctl.fails("waypoint", "apply", "-n", "shop", "--service-account", "reviews", "--name", "other")
    assert "already has waypoint 'reviews-waypoint'" in result.stderr
    assert ctl.get("Gateway", "shop", "other") is None
    # Re-applying the same one is fine.
    ctl.succeeds("waypoint", "apply", "-n", "shop", "--service-account", "reviews")


def test_a_name_taken_by_an_application_service_is_refused_with_another_name_to_use(ctl: Ctl) -> None:
    app_service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "reviews-waypoint", "namespace": "shop"},
        "spec": {"ports": [{"port": 80}]},
    }
    ctl.put(app_service)
    result = ctl.fails("waypoint", "apply", "-n", "shop", "--service-account", "reviews")
    assert "service shop/reviews-waypoint already exists" in result.stderr
    assert ctl.get("Gateway", "shop", "reviews-waypoint") is None
    ctl.succeeds("waypoint", "apply", "-n", "shop", "--service-account", "reviews", "--name", "reviews-wp")


def test_the_per_service_account_default_name_never_shares_the_served_identity(ctl: Ctl) -> None:
    ctl.succeeds("waypoint", "apply", "-n", "shop", "--service-account", "reviews")
    assert ctl.get("Gateway", "shop", "reviews") is None
    gw = ctl.get("Gateway", "shop", "reviews-waypoint")
    assert gw is not None and gw.annotations["istio.io/for-service-account"] == "reviews"


def test_the_waypoints_own_service_does_not_block_a_reapply(ctl: Ctl) -> None:
    ctl.succeeds("waypoint", "apply", "-n", "shop")
    own = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "waypoint",
            "namespace": "shop",
            "labels": {"gateway.networking.k8s.io/gateway-name": "waypoint"},
        },
        "spec": {"ports": [{"port": 15008}]},
    }
    ctl.put(own)
    ctl.succeeds("waypoint", "apply", "-n", "shop", "--for", "all")


def test_enroll_namespace_labels_it_after_applying(ctl: Ctl) -> None:
    ctl.put(namespace("shop", **{"istio.io/dataplane-mode": "ambient"}))
    result = ctl.succeeds("waypoint", "apply", "-n", "shop", "--enroll-namespace")
    assert result.stdout.splitlines() == [
        "✅ waypoint shop/waypoint applied",
        '✅ namespace shop labeled with "istio.io/use-waypoint: waypoint"',
    ]
    assert result.stderr == ""
    ns = ctl.get("Namespace", "", "shop")
    assert ns is not None and ns.labels["istio.io/use-waypoint"] == "waypoint"


def test_enroll_namespace_warns_with_the_exact_fix_when_the_namespace_is_not_ambient(ctl: Ctl) -> None:
    ctl.put(namespace("shop"))
    result = ctl.succeeds("waypoint", "apply", "-n", "shop", "--enroll-namespace")
    assert "namespace is not enrolled in ambient" in result.stderr
    assert "`ambientctl namespace enable shop`" in result.stderr
    ns = ctl.get("Namespace", "", "shop")
    assert ns is not None and ns.labels == {"istio.io/use-waypoint": "waypoint"}


def test_enroll_namespace_of_a_missing_namespace_writes_nothing(ctl: Ctl) -> None:
    result = ctl.fails("waypoint", "apply", "-n", "shop", "--enroll-namespace")
    assert (
        "namespace: shop not found" in result.stderr and "ambientctl namespace enable shop" in result.stderr
    )
    assert ctl.get("Gateway", "shop", "waypoint") is None


def test_enroll_namespace_never_replaces_another_waypoint_without_overwrite(ctl: Ctl) -> None:
    ctl.put(namespace("shop", **{"istio.io/dataplane-mode": "ambient", "istio.io/use-waypoint": "old"}))
    result = ctl.fails("waypoint", "apply", "-n", "shop", "--enroll-namespace")
    assert "already has an enrolled waypoint (istio.io/use-waypoint=old)" in result.stderr
    assert "--overwrite" in result.stderr
    assert ctl.get("Gateway", "shop", "waypoint") is None

    ctl.succeeds("waypoint", "apply", "-n", "shop", "--enroll-namespace", "--overwrite")
    ns = ctl.get("Namespace", "", "shop")
    assert ns is not None and ns.labels["istio.io/use-waypoint"] == "waypoint"


@pytest.fixture
def controller(ctl: Ctl) -> Iterator[threading.Event]:
    """A concurrent writer standing in for istiod_lite's waypoint controller: once the Gateway
    shop/waypoint exists, it writes a status with Programmed=True (polling with a deadline)."""
    stop = threading.Event()
    done = threading.Event()

    def run() -> None:
        with ctl.store() as store:
            for _ in range(2000):  # bounded: 2000 x 10 ms at most
                found = store.get(ResourceRef("Gateway", "shop", "waypoint"))
                if found is not None:
                    store.apply([msgspec.structs.replace(found, status=PROGRAMMED_STATUS)])
                    done.set()
                    return
                if stop.wait(0.01):
                    return

    thread = threading.Thread(target=run, name="fake-waypoint-controller")
    thread.start()
    try:
        yield done
    finally:
        stop.set()
        thread.join(timeout=30)


def test_wait_returns_once_the_controller_programs_the_waypoint(
    ctl: Ctl, controller: threading.Event
) -> None:
    ctl.put(namespace("shop", **{"istio.io/dataplane-mode": "ambient"}))
    result = ctl.succeeds(
        "waypoint", "apply", "-n", "shop", "--wait", "--waypoint-timeout", "60s", "--enroll-namespace"
    )
    assert controller.is_set()
    assert result.stdout.splitlines() == [
        "✅ waypoint shop/waypoint applied",
        "✅ waypoint shop/waypoint is ready!",
        '✅ namespace shop labeled with "istio.io/use-waypoint: waypoint"',
    ]


def test_wait_times_out_with_what_the_status_says_and_does_not_enroll(ctl: Ctl) -> None:
    ctl.put(namespace("shop", **{"istio.io/dataplane-mode": "ambient"}))
    ctl.succeeds("waypoint", "apply", "-n", "shop")
    ctl.set_status("shop", "waypoint", NOT_PROGRAMMED_STATUS)
    result = ctl.fails(
        "waypoint", "apply", "-n", "shop", "-w", "--waypoint-timeout", "200ms", "--enroll-namespace"
    )
    assert result.stdout == "✅ waypoint shop/waypoint applied\n"
    error = result.stderr.strip().splitlines()[-1]
    assert "timed out after 0.2s while waiting for waypoint shop/waypoint" in error
    assert "Programmed=False, NoResources, Deployment not ready" in error
    assert "istiod-lite" in error
    ns = ctl.get("Namespace", "", "shop")
    assert ns is not None and "istio.io/use-waypoint" not in ns.labels


def test_wait_without_any_status_says_no_controller_acted(ctl: Ctl) -> None:
    result = ctl.fails("waypoint", "apply", "-n", "shop", "--wait", "--waypoint-timeout", "0.1")
    assert "no status yet: no waypoint controller has acted on it" in result.stderr


def test_a_bad_timeout_is_a_usage_error(ctl: Ctl) -> None:
    result = ctl("waypoint", "apply", "--wait", "--waypoint-timeout", "soon")
    assert result.exit_code == 2 and "90s" in result.stderr
    assert ctl.get("Gateway", "default", "waypoint") is None


# --- list ---------------------------------------------------------------------------------------------


@pytest.fixture
def waypoints(ctl: Ctl) -> Ctl:
    ctl.put(
        gateway("waypoint"),
        gateway("reviews", annotations={"istio.io/for-service-account": "reviews"}),
        gateway(
            "ratings",
            annotations={"istio.io/for-service-account": "ratings"},
            labels={"istio.io/waypoint-for": "workload", "istio.io/rev": "canary"},
        ),
        gateway("ingress", cls="istio"),
        gateway("waypoint", ns="web", labels={"istio.io/waypoint-for": "all"}),
    )
    ctl.set_status("shop", "waypoint", PROGRAMMED_STATUS)
    ctl.set_status("shop", "ratings", NOT_PROGRAMMED_STATUS)
    return ctl


def test_list_shows_revision_traffic_type_and_programmed_per_waypoint(waypoints: Ctl) -> None:
    assert table(waypoints.succeeds("waypoint", "list", "-n", "shop").stdout) == [
        ["NAME", "REVISION", "TRAFFIC TYPE", "PROGRAMMED"],
        ["ratings", "canary", "workload", "False"],
        ["reviews", "default", "all", "Unknown"],
        ["waypoint", "default", "service", "True"],
    ]


def test_list_all_namespaces_adds_the_namespace_column(waypoints: Ctl) -> None:
    rows = table(waypoints.succeeds("waypoint", "list", "-A").stdout)
    assert rows[0] == ["NAMESPACE", "NAME", "REVISION", "TRAFFIC TYPE", "PROGRAMMED"]
    assert [r[:2] for r in rows[1:]] == [
        ["shop", "ratings"],
        ["shop", "reviews"],
        ["shop", "waypoint"],
        ["web", "waypoint"],
    ]
    assert rows[-1][3] == "all"


def test_list_as_yaml_prints_the_waypoint_gateways_only(waypoints: Ctl) -> None:
    doc = yaml.safe_load(waypoints.succeeds("waypoint", "list", "-n", "shop", "-o", "yaml").stdout)
    assert doc["kind"] == "List"
    assert [item["metadata"]["name"] for item in doc["items"]] == ["ratings", "reviews", "waypoint"]


def test_list_of_an_empty_namespace_says_so_on_stderr(ctl: Ctl) -> None:
    result = ctl.succeeds("waypoint", "list", "-n", "empty")
    assert result.stdout == "" and "No waypoints found." in result.stderr


# --- status -------------------------------------------------------------------------------------------


def test_status_shows_each_waypoints_programmed_condition(waypoints: Ctl) -> None:
    assert table(waypoints.succeeds("waypoint", "status", "-n", "shop").stdout) == [
        ["NAME", "STATUS", "TYPE", "REASON", "MESSAGE"],
        ["ratings", "False", "Programmed", "NoResources", "Deployment not ready"],
        ["reviews", "Unknown", "Programmed", "Pending", "Waiting for controller"],
        ["waypoint", "True", "Programmed", "Programmed", PROGRAMMED_MESSAGE],
    ]


def test_status_shows_one_waypoint_by_name_or_all_namespaces_with_their_column(waypoints: Ctl) -> None:
    rows = table(waypoints.succeeds("waypoint", "status", "-n", "shop", "--name", "waypoint").stdout)
    assert [r[0] for r in rows] == ["NAME", "waypoint"]
    rows = table(waypoints.succeeds("waypoint", "status", "-A").stdout)
    assert rows[0] == ["NAMESPACE", "NAME", "STATUS", "TYPE", "REASON", "MESSAGE"]
    assert rows[-1][:3] == ["web", "waypoint", "Unknown"]


def test_status_of_a_missing_waypoint_is_an_error(waypoints: Ctl) -> None:
    assert (
        "waypoint shop/nope not found"
        in waypoints.fails("waypoint", "status", "-n", "shop", "--name", "nope").stderr
    )


def test_status_wait_times_out_naming_the_waypoints_not_programmed(waypoints: Ctl) -> None:
    result = waypoints.fails("waypoint", "status", "-n", "shop", "--wait", "--waypoint-timeout", "100ms")
    assert table(result.stdout)[0] == ["NAME", "STATUS", "TYPE", "REASON", "MESSAGE"]
    error = result.stderr.strip().splitlines()[-1]
    assert "shop/ratings, shop/reviews" in error and "shop/waypoint" not in error


# --- delete -------------------------------------------------------------------------------------------


def test_delete_by_name_deletes_what_exists_and_fails_naming_what_does_not(waypoints: Ctl) -> None:
    result = waypoints.fails("waypoint", "delete", "-n", "shop", "reviews", "nope", "ingress")
    assert result.stdout == "waypoint shop/reviews deleted\n"
    assert "waypoint shop/nope not found; waypoint shop/ingress not found" in result.stderr
    assert waypoints.get("Gateway", "shop", "reviews") is None
    assert waypoints.get("Gateway", "shop", "ingress") is not None  # not a waypoint: left alone


def test_delete_all_leaves_other_gateways_and_namespaces(waypoints: Ctl) -> None:
    out = waypoints.succeeds("waypoint", "delete", "-n", "shop", "--all").stdout
    assert sorted(out.splitlines()) == [
        "waypoint shop/ratings deleted",
        "waypoint shop/reviews deleted",
        "waypoint shop/waypoint deleted",
    ]
    with waypoints.store() as store:
        assert [g.name for g in store.list("Gateway")] == ["ingress", "waypoint"]


def test_delete_by_revision_deletes_only_that_revision(waypoints: Ctl) -> None:
    assert waypoints.succeeds("waypoint", "delete", "-n", "shop", "-r", "canary").stdout == (
        "waypoint shop/ratings deleted\n"
    )
    assert waypoints.get("Gateway", "shop", "waypoint") is not None


def test_delete_warns_when_the_namespace_still_uses_the_deleted_waypoint(waypoints: Ctl) -> None:
    waypoints.put(namespace("shop", **{"istio.io/use-waypoint": "waypoint"}))
    result = waypoints.succeeds("waypoint", "delete", "-n", "shop", "waypoint")
    assert "namespace shop is still labeled istio.io/use-waypoint" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--all", "waypoint"), "cannot specify waypoint names when deleting all waypoints"),
        ((), "must specify a waypoint name or delete all using --all"),
    ],
    ids=["names together with --all are refused", "nothing to delete is refused"],
)
def test_delete_argument_mistakes_are_refused(waypoints: Ctl, args: tuple[str, ...], message: str) -> None:
    assert message in waypoints.fails("waypoint", "delete", "-n", "shop", *args).stderr
    assert waypoints.get("Gateway", "shop", "waypoint") is not None


# --- get gateways -------------------------------------------------------------------------------------


def test_get_gateways_shows_kubectls_columns(waypoints: Ctl) -> None:
    assert aged(table(waypoints.succeeds("get", "gateways", "-n", "shop").stdout)) == [
        ["NAME", "CLASS", "ADDRESS", "PROGRAMMED", "AGE"],
        ["ingress", "istio", "<none>", "Unknown", "<age>"],
        ["ratings", "istio-waypoint", "<none>", "False", "<age>"],
        ["reviews", "istio-waypoint", "<none>", "Unknown", "<age>"],
        ["waypoint", "istio-waypoint", "10.96.0.50", "True", "<age>"],
    ]


# --- pure pieces --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90.0), ("2m", 120.0), ("1m30s", 90.0), ("500ms", 0.5), ("1h", 3600.0), ("2.5", 2.5)],
    ids=[
        "seconds as istioctl's default is written",
        "minutes",
        "minutes and seconds together",
        "milliseconds",
        "hours",
        "a plain number is seconds",
    ],
)
def test_durations_read_as_istioctl_reads_them(text: str, seconds: float) -> None:
    assert wp.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["", "soon", "10x", "0s", "-5", "5s garbage", "nan", "inf"], ids=lambda t: f"{t!r} is refused"
)
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="duration|more than zero"):
        wp.parse_duration(text)


@given(st.integers(0, 99), st.integers(0, 99), st.integers(0, 99), st.integers(0, 999))
def test_any_composed_duration_adds_up(h: int, m: int, s: int, ms: int) -> None:
    parts = [(h, "h"), (m, "m"), (s, "s"), (ms, "ms")]
    text = "".join(f"{n}{u}" for n, u in parts if n)
    total = h * 3600 + m * 60 + s + ms / 1000
    if total == 0:
        with pytest.raises(ValueError):
            wp.parse_duration(text or "0s")
    else:
        assert wp.parse_duration(text) == pytest.approx(total)


@given(st.text(max_size=20))
def test_any_text_is_a_duration_or_a_value_error(text: str) -> None:
    try:
        assert wp.parse_duration(text) > 0
    except ValueError:
        pass


def test_merge_keeps_listeners_others_added_and_replaces_the_mesh_listener() -> None:
    existing = build_resource(gateway("waypoint"))
    extra = {"name": "metrics", "port": 15020, "protocol": "HTTP"}
    existing = msgspec.structs.replace(
        existing,
        spec={**existing.spec, "listeners": [{"name": "mesh", "port": 1, "protocol": "TCP"}, extra]},
    )
    wanted = wp.to_resource(wp.build_waypoint("waypoint", "shop"))
    merged = wp.merge_for_apply(existing, wanted)
    assert merged.spec["listeners"] == [wp.MESH_LISTENER, extra]
    assert merged.status == {}
