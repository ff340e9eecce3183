/*
 * The SysCare page: hot patches on this host and in the repositories, over the helper's
 * D-Bus API (dbus/org.openeuler.SysCare1.xml). Cockpit's bridge makes the calls as the
 * logged-in user, so the helper (uid 0 or polkit org.openeuler.syscare.manage) decides
 * who may change anything; the page never assumes it knows better and shows the refusal.
 */
"use strict";

const BUS_NAME = "org.openeuler.SysCare1";
const OBJ_PATH = "/org/openeuler/SysCare1";
const IFACE = "org.openeuler.SysCare1.Manager";
const ERR_PREFIX = "org.openeuler.SysCare1.Error.";

// What each state allows, in the order the buttons appear. Apply takes NOT-APPLIED to
// ACTIVED, Active a DEACTIVED one back; Remove takes any state to NOT-APPLIED.
const ACTIONS = {
    "NOT-APPLIED": ["Apply"],
    DEACTIVED: ["Active", "Remove"],
    ACTIVED: ["Deactive", "Accept", "Remove"],
    ACCEPTED: ["Deactive", "Remove"],
};
const LABELS = { Apply: "Apply", Active: "Activate", Deactive: "Deactivate", Accept: "Accept", Remove: "Remove" };

let client = null;
let generation = 0; // finished loads, for whoever waits for the page (and the browser test)
let loading = null;
let reloadTimer = null;
let busy = false;
let hostPatches = []; // Info's reply of the last load

function $(sel) { return document.querySelector(sel) }

function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
        if (v === undefined || v === null || v === false) continue;
        if (k === "className") e.className = v;
        else e.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
        if (c === null || c === undefined) continue;
        e.append(typeof c === "string" ? document.createTextNode(c) : c);
    }
    return e;
}

/* Errors. The helper's messages are written to be shown to a user (dbus/errors.go). */

function classify(ex) {
    const name = (ex && ex.name) || "";
    const problem = (ex && ex.problem) || "";
    if (name === ERR_PREFIX + "AccessDenied" || name === "org.freedesktop.DBus.Error.AccessDenied" ||
        problem === "access-denied")
        return "denied";
    if (name === "org.freedesktop.DBus.Error.ServiceUnknown" || name === "org.freedesktop.DBus.Error.NameHasNoOwner" ||
        name === "org.freedesktop.DBus.Error.NoReply" || name === "org.freedesktop.DBus.Error.NoServer" ||
        name === "org.freedesktop.DBus.Error.Disconnected" || name.startsWith("org.freedesktop.DBus.Error.Spawn.") ||
        ["not-found", "disconnected", "terminated", "no-cockpit", "not-supported", "internal-error"].includes(problem))
        return "unreachable";
    return "failed";
}

// Cockpit's problem codes, said for this page ("not-found" is also what the bridge
// replies when the bus cannot start the helper).
const PROBLEMS = {
    "not-found": "the system bus has no org.openeuler.SysCare1 service, or it failed to start",
    disconnected: "the connection to the bus was closed",
    "access-denied": "the bridge was refused access",
};

function messageOf(ex) {
    if (!ex) return "unknown error";
    if (ex.problem && (!ex.message || ex.message === ex.problem))
        return PROBLEMS[ex.problem] || cockpit.message({ problem: ex.problem });
    if (ex.message) return ex.message;
    return String(ex);
}

function showAlert(kind, title, detail) {
    const level = kind === "done" ? "alert-success" : kind === "denied" ? "alert-warning" : "alert-danger";
    const box = el("div", { className: "alert " + level, role: "alert", "data-kind": kind },
        el("strong", {}, title), detail ? el("span", { className: "alert-detail" }, detail) : null,
        el("button", { type: "button", className: "alert-close", "aria-label": "Dismiss" }, "×"));
    box.querySelector(".alert-close").addEventListener("click", () => box.remove());
    // One alert per kind: a newer one replaces the older.
    const old = $(`#alerts [data-kind="${kind}"]`);
    if (old) old.replaceWith(box);
    else $("#alerts").append(box);
}

function clearAlert(kind) {
    const old = $(`#alerts [data-kind="${kind}"]`);
    if (old) old.remove();
}

function reportError(what, ex) {
    const kind = classify(ex);
    if (kind === "unreachable") {
        showAlert(kind, "The SysCare helper is not reachable.",
            `${what}: ${messageOf(ex)}. Is syscare-helper installed, and is the system bus running?`);
    } else if (kind === "denied") {
        showAlert(kind, "You are not authorized to change hot patches.",
            `${what}: ${messageOf(ex)}. Turn on administrative access, or ask an administrator for ` +
            "the polkit action org.openeuler.syscare.manage.");
    } else {
        showAlert(kind, `${what} failed.`, messageOf(ex));
    }
}

/* The bus. */

function connect() {
    if (client) return client;
    // superuser "try": with administrative access on, the calls go through the privileged
    // bridge; without it, as the user, and the helper asks polkit.
    client = cockpit.dbus(BUS_NAME, { bus: "system", superuser: "try" });
    client.addEventListener("close", (_ev, options) => {
        client = null;
        reportError("Connection to the system bus", options);
    });
    client.subscribe({ path: OBJ_PATH, interface: IFACE, member: "StateChanged" }, (_path, _iface, _signal, args) => {
        const [uuid, name, oldStatus, newStatus] = args;
        const row = document.querySelector(`#host tr[data-entity="${CSS.escape(uuid)}"]`);
        if (row) row.classList.add("changing");
        $("#updated").textContent = `${name}: ${oldStatus} → ${newStatus}`;
        scheduleReload();
    });
    return client;
}

function call(method, args, signature) {
    return connect().call(OBJ_PATH, IFACE, method, args, { type: signature });
}

// Several signals come in a burst (one per entity of a transaction): load once after them.
function scheduleReload() {
    clearTimeout(reloadTimer);
    reloadTimer = setTimeout(load, 150);
}

/* Loading. */

async function processesOf(patch) {
    if (patch.kind && patch.kind !== "user") return null;
    try {
        const [rows] = await call("ProcessStatus", [patch.uuid], "s");
        const comms = await Promise.all(rows.map(r => cockpit.file(`/proc/${r[0]}/comm`).read()
                .then(c => (c || "").trim(), () => "")));
        return rows.map((r, i) => ({ pid: r[0], entity: r[1], status: r[2], detail: r[3], container: r[5], comm: comms[i] }));
    } catch (ex) {
        return null;
    }
}

async function load() {
    if (loading) {
        scheduleReload();
        return loading;
    }
    loading = (async () => {
        try {
            const [list] = await call("List", [], "");
            clearAlert("unreachable");
            // Info names what it describes; a broken directory (no patch uuid) has no info.
            const ids = [...new Set(list.filter(r => r[2] !== "BROKEN" && r[3]).map(r => r[3]))];
            hostPatches = ids.length ? JSON.parse((await call("Info", [ids], "as"))[0]) : [];
            let offers = null;
            let offersError = null;
            try {
                const [resolved] = await call("Resolve", [{ all: cockpit.variant("b", true) }], "a{sv}");
                offers = JSON.parse(resolved);
            } catch (ex) {
                offersError = ex;
            }
            const procs = await Promise.all(hostPatches.map(processesOf));
            renderHost(list, hostPatches, procs, offers || []);
            renderOffers(offers, offersError);
            $("#updated").textContent = "Updated " + new Date().toLocaleTimeString();
        } catch (ex) {
            reportError("Reading the hot patches", ex);
        } finally {
            generation++;
            document.body.dataset.generation = String(generation);
            loading = null;
        }
    })();
    return loading;
}

/* Rendering. */

function nvr(p) { return p ? `${p.name}-${p.epoch ? p.epoch + ":" : ""}${p.version}-${p.release}` : "" }

// The CVEs a host patch fixes are in the advisories that publish it: match the offers
// by the patch RPM's name (a patch directory installed without its RPM matches by the
// patch name and target too).
function cvesOf(patch, offers) {
    const out = new Set();
    for (const c of offers) {
        const rpm = c.package.replace(/-[^-]+-[^-]+\.[^.]+$/, "");
        const sameTarget = c.target && nvr(c.target) === nvr(patch.target);
        if (rpm === patch.rpm_name || (c.patch_name === patch.name && sameTarget))
            (c.cves || []).forEach(v => out.add(v));
    }
    return [...out].sort();
}

function stateBadge(status) {
    return el("span", { className: "badge state-" + status.toLowerCase(), "data-state": status }, status);
}

function processCell(procs, entityUUID) {
    if (procs === null) return el("span", { className: "muted" }, "—");
    const mine = procs.filter(p => p.entity === entityUUID);
    if (mine.length === 0) return el("span", { className: "muted" }, "no process runs it");
    const patched = mine.filter(p => p.status === "ACTIVED");
    const list = el("ul", { className: "procs" });
    for (const p of mine) {
        const label = `${p.pid}${p.comm ? " " + p.comm : ""}${p.container ? " [" + p.container.slice(0, 12) + "]" : ""}`;
        list.append(el("li", { className: p.status === "ACTIVED" ? "patched" : "unpatched", "data-pid": p.pid, title: p.detail || p.status },
            label, " ", el("span", { className: "muted" }, p.status === "ACTIVED" ? "patched" : "not patched")));
    }
    return el("div", {}, el("span", { className: "count" }, `${patched.length} of ${mine.length} patched`), list);
}

function renderHost(list, patches, procs, offers) {
    const body = $("#host tbody");
    body.replaceChildren();
    const byEntity = new Map();
    patches.forEach((p, i) => (p.entities || []).forEach(e => byEntity.set(e.uuid, { patch: p, entity: e, procs: procs[i] })));
    for (const [uuid, name, status, patchUUID, problem] of list) {
        const known = byEntity.get(uuid);
        if (!known) {
            // A broken patch directory: List names it and says why.
            body.append(el("tr", { "data-entity": uuid, "data-state": status },
                el("td", {}, name), el("td", {}), el("td", {}), el("td", {}), el("td", {}, stateBadge(status)),
                el("td", {}), el("td", { className: "problem" }, problem || ""), el("td", {})));
            continue;
        }
        const { patch, entity } = known;
        const cves = cvesOf(patch, offers);
        const actions = el("div", { className: "actions" });
        for (const method of ACTIONS[status] || []) {
            const b = el("button", { type: "button", className: "btn btn-secondary btn-sm", "data-action": method.toLowerCase() }, LABELS[method]);
            b.addEventListener("click", () => act(method, uuid, entity.name));
            actions.append(b);
        }
        body.append(el("tr", { "data-entity": uuid, "data-patch": patchUUID, "data-patch-name": patch.name, "data-state": status },
            el("td", { className: "patch" }, el("strong", {}, patch.name), ` ${patch.version}-${patch.release}`,
                patch.description ? el("div", { className: "muted" }, patch.description) : null),
            el("td", {}, patch.target ? `${nvr(patch.target)}.${patch.target.arch}` : ""),
            el("td", { className: "cves" }, cves.length ? cves.map(c => el("span", { className: "cve" }, c)) : el("span", { className: "muted" }, "—")),
            el("td", { className: "file" }, entity.target_path || ""),
            el("td", {}, stateBadge(status), problem ? el("div", { className: "problem" }, problem) : null),
            el("td", { className: "processes" }, processCell(known.procs, uuid)),
            el("td", { className: "report" }, entity.report_summary || el("span", { className: "muted" }, "no report")),
            el("td", {}, actions)));
    }
    $("#host-empty").hidden = list.length > 0;
    $("#upgrade-all").disabled = busy || upgradeIds().length === 0;
}

function renderOffers(offers, error) {
    const body = $("#offers tbody");
    body.replaceChildren();
    if (error) {
        const text = classify(error) === "unreachable" ? "The helper is not reachable." : messageOf(error);
        body.append(el("tr", { className: "offers-error" }, el("td", { colspan: 6 }, "Repositories could not be read: " + text)));
        $("#offers-empty").hidden = true;
        return;
    }
    const onHost = new Set(hostPatches.map(p => p.rpm_name));
    for (const c of offers) {
        const rpm = c.package.replace(/-[^-]+-[^-]+\.[^.]+$/, "");
        const here = c.installed || onHost.has(rpm);
        body.append(el("tr", { "data-package": c.package },
            el("td", {}, el("strong", {}, c.advisory || "—"), c.title ? el("div", { className: "muted" }, c.title) : null),
            el("td", {}, c.severity || "—"),
            el("td", { className: "cves" }, (c.cves || []).length ? c.cves.map(v => el("span", { className: "cve" }, v)) : "—"),
            el("td", {}, c.package),
            el("td", {}, c.target ? `${nvr(c.target)}.${c.target.arch}` : ""),
            el("td", {}, here ? "installed" : el("span", { className: "muted" }, "available"))));
    }
    $("#offers-empty").hidden = offers.length > 0;
}

/* Actions. */

// The newest patch on the host per target package: what "Upgrade all" names. The helper
// supersedes the others of the same target in the same transaction.
function upgradeIds() {
    const newest = new Map();
    const cmp = (a, b) => a.name.localeCompare(b.name, undefined, { numeric: true }) ||
        a.version.localeCompare(b.version, undefined, { numeric: true }) ||
        a.release.localeCompare(b.release, undefined, { numeric: true });
    for (const p of hostPatches) {
        if (p.removed) continue;
        const key = `${nvr(p.target)}.${p.target.arch}`;
        const cur = newest.get(key);
        if (!cur || cmp(p, cur) > 0) newest.set(key, p);
    }
    return [...newest.values()].map(p => p.uuid);
}

function setBusy(on) {
    busy = on;
    document.querySelectorAll("#host button[data-action], #upgrade-all").forEach(b => { b.disabled = on });
    document.body.classList.toggle("busy", on);
}

async function act(method, uuid, name) {
    setBusy(true);
    try {
        const [states] = await call(method, [[uuid], false], "asb");
        clearAlert("denied");
        showAlert("done", `${LABELS[method]}: done.`, states.map(s => `${s[1]} is ${s[2]}`).join("; "));
    } catch (ex) {
        reportError(`${LABELS[method]} ${name}`, ex);
    } finally {
        setBusy(false);
        await load();
    }
}

async function upgradeAll() {
    const ids = upgradeIds();
    if (ids.length === 0) return;
    setBusy(true);
    try {
        const [rows] = await call("Upgrade", [ids, {}], "asa{sv}");
        clearAlert("denied");
        showAlert("done", "Upgrade: done.", rows.map(r => `${r[1]}: ${r[4]} (${r[2]} → ${r[3]})${r[5] ? ", " + r[5] : ""}`).join("; "));
    } catch (ex) {
        reportError("Upgrade all", ex);
    } finally {
        setBusy(false);
        await load();
    }
}

document.addEventListener("DOMContentLoaded", () => {
    $("#refresh").addEventListener("click", () => load());
    $("#upgrade-all").addEventListener("click", upgradeAll);
    load();
    cockpit.transport.wait(() => {});
});
