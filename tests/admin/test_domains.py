"""A clinic admin onboards relay domains: keys, the records to publish, and the DNS check.

The DNS answers come from a real dnslib server on loopback; the commands are the real
``carebridge`` CLI in a subprocess.
"""

from __future__ import annotations

import json

import pytest

from gateway.admin import domains
from gateway.admin.clinics import get_clinic
from gateway.errors import UsageError
from gateway.models import DkimKey
from gateway.outbound import dkim
from gateway.services import Services
from tests.admin.dnsserver import Zone
from tests.admin.helpers import Cli, sign_in
from tests.support.world import FakeClock, World


def _by_kind(records: list[dict[str, object]]) -> dict[str, list[dict[str, object]]]:
    out: dict[str, list[dict[str, object]]] = {}
    for r in records:
        out.setdefault(str(r["kind"]), []).append(r)
    return out


async def test_published_records_pass_and_each_removed_one_is_named(
    cli: Cli, world: World, dns: tuple[Zone, int], dns_services: Services
) -> None:
    zone, _ = dns
    clinic = await world.clinic("riverside")
    added = cli(
        "domain", "add", "riverside",
        "--sending-domain", "Riverside.Example", "--reply-domain", "reply.riverside.example",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert "ed25519 DKIM key" in added.stdout and "rsa DKIM key" in added.stdout

    out = cli("domain", "dns", clinic.slug, "--json")
    assert out.returncode == 0, out.stderr
    published = json.loads(out.stdout)
    kinds = _by_kind(published)
    assert len(kinds["dkim"]) == 2
    assert {r["name"] for r in kinds["spf"]} == {"riverside.example", "reply.riverside.example"}
    assert kinds["dmarc"][0]["name"] == "_dmarc.riverside.example"
    assert "rua=mailto:postmaster@reply.riverside.example" in str(kinds["dmarc"][0]["value"])
    assert kinds["mx"][0]["value"] == "10 mx.test.example."
    rsa = next(r for r in kinds["dkim"] if "k=rsa" in str(r["value"]))
    assert len(rsa["strings"]) == 2  # an RSA-2048 key does not fit in one TXT string

    # Nothing published yet: every record is reported missing and the command fails.
    before = cli("domain", "check", clinic.slug)
    assert before.returncode == 1
    assert before.stdout.count("MISSING") == len(published)

    zone.publish(published)
    ok = cli("domain", "check", clinic.slug)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "all records ok" in ok.stdout

    # Through the CLI once, then (faster, same code) through the library for every record.
    zone.remove(str(kinds["mx"][0]["name"]), "MX")
    bad = cli("domain", "check", clinic.slug, "--json")
    assert bad.returncode == 1
    report = json.loads(bad.stdout)
    assert [(r["name"], r["status"]) for r in report["records"] if r["status"] != "ok"] == [
        ("reply.riverside.example", "missing")
    ]
    zone.publish(kinds["mx"])
    for record in published:
        name, rtype = str(record["name"]), str(record["type"])
        zone.remove(name, rtype)
        result = await domains.check_clinic(dns_services, clinic.slug, actor="test")
        failing = [(r.record.name, r.status) for r in result.results if not r.ok]
        # SPF at two names is two records; removing one leaves the other intact.
        assert failing == [(name, "missing")], failing
        zone.publish([r for r in published if (r["name"], r["type"]) == (name, rtype)])

    # A DKIM record carrying some other key is "different", not "missing".
    ed = next(r for r in kinds["dkim"] if "k=ed25519" in str(r["value"]))
    zone.set(str(ed["name"]), "TXT", [["v=DKIM1; k=ed25519; p=AAAAC3NzaC1lZDI1NTE5AAAAI"]])
    diff = cli("domain", "check", clinic.slug)
    assert diff.returncode == 1
    line = next(x for x in diff.stdout.splitlines() if str(ed["name"]) in x)
    assert line.startswith("DIFFERENT")


async def test_zone_file_text_lists_every_record(cli: Cli, world: World) -> None:
    await world.clinic("hillside")
    assert cli("domain", "add", "hillside", "--sending-domain", "hillside.example",
               "--reply-domain", "mail.hillside.example").returncode == 0  # fmt: skip
    text = cli("domain", "dns", "hillside").stdout
    assert "_dmarc.hillside.example. 3600 IN TXT" in text
    assert "mail.hillside.example. 3600 IN MX 10 mx.test.example." in text
    assert text.count("._domainkey.hillside.example.") == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sending-domain", "not a domain", "--reply-domain", "r.example"], "sending domain"),
        (["--sending-domain", "ok.example", "--reply-domain", "-bad-.example"], "reply domain"),
        (["--sending-domain", "ok.example", "--reply-domain", "localhost"], "reply domain"),
    ],
)
async def test_bad_domains_get_one_clear_line(
    cli: Cli, world: World, args: list[str], message: str
) -> None:
    await world.clinic("valley")
    r = cli("domain", "add", "valley", *args)
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


async def test_unknown_clinic_and_taken_reply_domain(cli: Cli, world: World) -> None:
    await world.clinic("one", reply_domain="reply.shared.example")
    await world.clinic("two")
    r = cli("domain", "dns", "nowhere")
    assert r.returncode == 2 and "no clinic 'nowhere'" in r.stderr
    r = cli("domain", "add", "two", "--sending-domain", "two.example",
            "--reply-domain", "reply.shared.example")  # fmt: skip
    assert r.returncode == 2 and "already belongs to clinic one" in r.stderr


async def _publish(services: Services, zone: Zone, slug: str) -> list[domains.DnsRecord]:
    async with services.sessions() as s:
        clinic = await get_clinic(s, slug)
        wanted = domains.records(services.config, clinic, await domains.clinic_keys(s, clinic))
    zone.publish([r.to_json() for r in wanted])
    return wanted


async def _signing(services: Services, slug: str) -> set[str]:
    async with services.sessions() as s:
        clinic = await get_clinic(s, slug)
        return {k.selector for k in await dkim.active_keys(s, clinic.id, clinic.sending_domain)}


async def _states(services: Services, slug: str) -> dict[str, str]:
    async with services.sessions() as s:
        clinic = await get_clinic(s, slug)
        return {k.selector: k.state for k in await domains.clinic_keys(s, clinic)}


async def test_rotation_switches_signing_only_once_dns_has_the_new_selector(
    dns_services: Services, dns: tuple[Zone, int], world: World, clock: FakeClock
) -> None:
    svc, (zone, _) = dns_services, dns
    await world.clinic("lakeside")
    async with svc.transaction() as s:
        c = await get_clinic(s, "lakeside")
        added = await domains.add_domains(
            s, c, sending_domain="lakeside.example", reply_domain="reply.lakeside.example",
            now=clock.now(), actor="test",
        )  # fmt: skip
    old = {k.selector for k in added.created_keys}
    assert old == {"cb20260302e", "cb20260302r"}
    await _publish(svc, zone, "lakeside")
    assert (await domains.check_clinic(svc, "lakeside", actor="test")).ok

    clock.advance(days=30)
    async with svc.transaction() as s:
        c = await get_clinic(s, "lakeside")
        new = {k.selector for k in await domains.rotate_dkim(s, c, now=clock.now(), actor="t")}
    assert new == {"cb20260401e", "cb20260401r"}
    assert await _signing(svc, "lakeside") == old

    # The new selectors are not in DNS yet: check names them and signing stays put.
    report = await domains.check_clinic(svc, "lakeside", actor="test")
    missing = {r.record.selector for r in report.results if r.status == "missing"}
    assert missing == new and report.activated == []
    assert await _signing(svc, "lakeside") == old
    with pytest.raises(UsageError, match="already pending"):
        async with svc.transaction() as s:
            await domains.rotate_dkim(s, await get_clinic(s, "lakeside"), now=clock.now(),
                                      actor="t")  # fmt: skip
    with pytest.raises(UsageError, match="still pending"):
        async with svc.transaction() as s:
            await domains.finish_rotation(s, await get_clinic(s, "lakeside"), now=clock.now(),
                                          actor="t")  # fmt: skip

    # Only one of the two new keys published: still no switch (the pair moves together).
    wanted = await _publish(svc, zone, "lakeside")
    rsa_new = next(r for r in wanted if r.selector == "cb20260401r")
    zone.remove(rsa_new.name, "TXT")
    assert (await domains.check_clinic(svc, "lakeside", actor="test")).activated == []
    assert await _signing(svc, "lakeside") == old

    await _publish(svc, zone, "lakeside")
    report = await domains.check_clinic(svc, "lakeside", actor="test")
    assert report.ok and sorted(report.activated) == sorted(new)
    assert await _signing(svc, "lakeside") == new
    states = await _states(svc, "lakeside")
    assert {states[s] for s in old} == {"retiring"}
    # Retiring keys stay published so mail signed just before the switch still verifies.
    async with svc.sessions() as s:
        c = await get_clinic(s, "lakeside")
        recs = domains.records(svc.config, c, await domains.clinic_keys(s, c))
        listed = {r.selector for r in recs if r.kind == "dkim"}
    assert old | new <= listed

    # After the grace period the next check retires them and drops them from the records.
    clock.advance(days=svc.config.dns.dkim_retire_after_days)
    report = await domains.check_clinic(svc, "lakeside", actor="test")
    assert sorted(report.retired) == sorted(old)
    async with svc.sessions() as s:
        c = await get_clinic(s, "lakeside")
        recs = domains.records(svc.config, c, await domains.clinic_keys(s, c))
        listed = {r.selector for r in recs if r.kind == "dkim"}
    assert listed == new


async def test_rotate_finish_retires_replaced_keys_at_once(
    dns_services: Services, dns: tuple[Zone, int], world: World, clock: FakeClock
) -> None:
    svc, (zone, _) = dns_services, dns
    await world.clinic("brook")
    async with svc.transaction() as s:
        c = await get_clinic(s, "brook")
        await domains.add_domains(
            s, c, sending_domain="brook.example", reply_domain="reply.brook.example",
            now=clock.now(), actor="t",
        )  # fmt: skip
        # Same day rotation: the selector still differs from the first pair's.
        new = await domains.rotate_dkim(s, c, now=clock.now(), actor="t")
    assert {k.selector for k in new} == {"cb20260302x2e", "cb20260302x2r"}
    await _publish(svc, zone, "brook")
    assert (await domains.check_clinic(svc, "brook", actor="t")).activated
    async with svc.transaction() as s:
        retired = await domains.finish_rotation(s, await get_clinic(s, "brook"),
                                                now=clock.now(), actor="t")  # fmt: skip
    assert {k.selector for k in retired} == {"cb20260302e", "cb20260302r"}
    states = await _states(svc, "brook")
    assert sorted(states.values()) == ["active", "active", "retired", "retired"]


async def test_add_again_is_idempotent_and_a_new_sending_domain_gets_new_keys(
    services: Services, world: World, clock: FakeClock
) -> None:
    await world.clinic("glen")

    async def add(sending: str) -> list[DkimKey]:
        async with services.transaction() as s:
            c = await get_clinic(s, "glen")
            r = await domains.add_domains(s, c, sending_domain=sending,
                                          reply_domain="reply.glen.example", now=clock.now(),
                                          actor="t")  # fmt: skip
            return r.created_keys

    assert len(await add("glen.example")) == 2
    assert await add("glen.example") == []
    assert len(await add("mail.glen.example")) == 2
    async with services.sessions() as s:
        keys = await domains.clinic_keys(s, await get_clinic(s, "glen"))
    assert sorted((k.domain, k.state) for k in keys) == [
        ("glen.example", "retired"),
        ("glen.example", "retired"),
        ("mail.glen.example", "active"),
        ("mail.glen.example", "active"),
    ]


async def test_unreachable_nameserver_is_reported_per_record_not_raised(
    services: Services, world: World, with_config, free_port
) -> None:
    svc = with_config(
        services, dns={"nameservers": (f"127.0.0.1:{free_port()}",), "timeout_seconds": 0.3}
    )
    await world.clinic("dry")
    async with svc.transaction() as s:
        await domains.add_domains(s, await get_clinic(s, "dry"), sending_domain="dry.example",
                                  reply_domain="reply.dry.example", now=svc.clock.now(),
                                  actor="t")  # fmt: skip
    report = await domains.check_clinic(svc, "dry", actor="t")
    assert not report.ok
    assert {r.status for r in report.results} == {"error"}


def _rec(kind: str, value: str, rtype: str = "TXT") -> domains.DnsRecord:
    return domains.DnsRecord(kind, "x.example", rtype, value)


@pytest.mark.parametrize(
    ("record", "found", "status"),
    [
        (
            _rec("spf", "v=spf1 a:mx.test.example -all"),
            ["v=spf1 include:_spf.google.com a:mx.test.example ~all"],
            "ok",
        ),
        (_rec("spf", "v=spf1 a:mx.test.example -all"), ["v=spf1 mx -all"], "different"),
        (
            _rec("spf", "v=spf1 a:mx.test.example -all"),
            ["v=spf1 a:mx.test.example -all", "v=spf1 -all"],
            "different",
        ),
        (_rec("spf", "v=spf1 a:mx.test.example -all"), ["google-site-verification=x"], "missing"),
        (
            _rec("dmarc", "v=DMARC1; p=quarantine; rua=mailto:pm@r.example"),
            ["v=DMARC1;p=quarantine;rua=mailto:pm@r.example,mailto:other@x.example;pct=100"],
            "ok",
        ),
        (
            _rec("dmarc", "v=DMARC1; p=quarantine; rua=mailto:pm@r.example"),
            ["v=DMARC1; p=none; rua=mailto:pm@r.example"],
            "different",
        ),
        (_rec("mx", "10 mx.test.example.", "MX"), ["20 MX.Test.Example."], "ok"),
        (_rec("mx", "10 mx.test.example.", "MX"), ["10 mail.other.example."], "different"),
    ],
)
def test_judging_is_lenient_only_where_it_is_harmless(
    record: domains.DnsRecord, found: list[str], status: str
) -> None:
    assert domains.judge(record, found).status == status


async def test_mta_sts_records_check_and_the_policy_is_served(
    dns_services: Services, dns: tuple[Zone, int], world: World, with_config, clock: FakeClock
) -> None:
    import httpx

    from gateway.web.app import create_app

    svc = with_config(dns_services, dns={"mta_sts_mode": "enforce"})
    zone, _ = dns
    await world.clinic("ridge")
    async with svc.transaction() as s:
        await domains.add_domains(
            s, await get_clinic(s, "ridge"), sending_domain="ridge.example",
            reply_domain="reply.ridge.example", now=clock.now(), actor="t",
        )  # fmt: skip
    wanted = await _publish(svc, zone, "ridge")
    sts = {r.kind: r for r in wanted if r.kind in ("mta-sts", "tls-rpt")}
    assert sts["mta-sts"].name == "_mta-sts.reply.ridge.example"
    assert sts["tls-rpt"].value == "v=TLSRPTv1; rua=mailto:postmaster@reply.ridge.example"
    assert (await domains.check_clinic(svc, "ridge", actor="t")).ok
    zone.set("_mta-sts.reply.ridge.example", "TXT", ["v=STSv1; id=stale"])
    report = await domains.check_clinic(svc, "ridge", actor="t")
    assert [(r.record.kind, r.status) for r in report.results if not r.ok] == [
        ("mta-sts", "different")
    ]

    transport = httpx.ASGITransport(app=create_app(svc))
    async with httpx.AsyncClient(transport=transport, base_url="https://x") as client:
        url = "/.well-known/mta-sts.txt"
        policy = await client.get(url, headers={"host": "mta-sts.reply.ridge.example"})
        assert policy.status_code == 200
        assert policy.text.splitlines() == [
            "version: STSv1", "mode: enforce", "mx: mx.test.example", "max_age: 604800"
        ]  # fmt: skip
        other = await client.get(url, headers={"host": "mta-sts.unknown.example"})
        assert other.status_code == 404


async def test_records_need_keys_first(cli: Cli, world: World, web) -> None:
    """A clinic made with domains but no keys is told to run 'domain add', not shown a list
    that would pass a check while mail goes out unsigned."""
    await world.clinic("bare", sending_domain="bare.example", reply_domain="reply.bare.example")
    r = cli("domain", "dns", "bare")
    assert r.returncode == 2 and "no DKIM keys" in r.stderr and "domain add bare" in r.stderr
    r = cli("domain", "check", "bare")
    assert r.returncode == 2 and "no DKIM keys" in r.stderr
    await world.staff(None, role="operator", email="ops@carebridge.example")
    ops = web()
    await sign_in(ops, "ops@carebridge.example")
    page = await ops.get("/admin/domains", params={"clinic": "bare"})
    assert page.status_code == 200 and "Save the domains to create" in page.text
