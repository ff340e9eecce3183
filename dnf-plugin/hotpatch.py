# dnf hotpatch: install hot patch RPMs from repositories and switch them on in the
# running system through syscare-helper (D-Bus). This plugin holds no patch logic: the
# helper resolves which patch RPMs apply (Resolve) and runs the upgrade policy -
# supersede the older patches of a target, apply or activate, accept, roll everything
# back on failure - as one transaction (Upgrade); DNF downloads, verifies, installs and,
# after a failure, erases the RPMs.
#
# Load it without installing: dnf --setopt=pluginpath=DIR hotpatch list
"""DNF 4 plugin providing `dnf hotpatch` and `dnf hotupgrade`."""

import json
import logging
import os
import sys

import dnf
import dnf.cli
import dnf.exceptions

logger = logging.getLogger('dnf.plugin')

BUS_NAME = 'org.openeuler.SysCare1'
OBJECT_PATH = '/org/openeuler/SysCare1'
INTERFACE = 'org.openeuler.SysCare1.Manager'

NOT_APPLIED, DEACTIVED, ACTIVED, ACCEPTED = 'NOT-APPLIED', 'DEACTIVED', 'ACTIVED', 'ACCEPTED'
AVAILABLE = 'AVAILABLE'
SUPERSEDED = 'SUPERSEDED'

SUBCOMMANDS = ('list', 'info', 'install', 'upgrade', 'apply', 'activate', 'deactivate',
               'accept', 'remove')
# Spellings of the helper's state machine and of openEuler's tools, mapped to ours.
SUBCOMMAND_ALIASES = {'active': 'activate', 'deactive': 'deactivate', 'update': 'upgrade'}
# subcommand -> helper method of the state transition.
TRANSITIONS = {'apply': 'Apply', 'activate': 'Active', 'deactivate': 'Deactive',
               'accept': 'Accept', 'remove': 'Remove'}


class HelperError(dnf.exceptions.Error):
    """A call to syscare-helper failed; the message is the helper's, safe to show.
    kind is the helper's error kind (HealthCheckFailed, OutsideWindow, ...) or ''."""

    def __init__(self, msg, kind=''):
        super(HelperError, self).__init__(msg)
        self.kind = kind


def parse_duration(text):
    """Seconds from '30s', '2m', '1h', '500ms' or a plain number of seconds."""
    t = str(text).strip()
    units = (('ms', 0.001), ('s', 1), ('m', 60), ('h', 3600))
    for suffix, mult in units:
        if t.endswith(suffix) and not (suffix == 's' and t.endswith('ms')):
            t, factor = t[:-len(suffix)], mult
            break
    else:
        factor = 1
    try:
        value = float(t) * factor
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError('%r is not a duration such as 30s, 2m or 500ms' % text)
    return value


def _plain(value):
    """Turns dbus-python values into plain Python ones."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, str):
        return str(value)
    return value


class Helper(object):
    """syscare-helper's D-Bus methods, over a proxy that has them as attributes.

    The proxy is a dbus.Interface in production and a plain object in unit tests."""

    def __init__(self, proxy, bus=None):
        self._proxy = proxy
        # The connection, when it has a GLib main loop: only then can the helper's
        # Progress signals be received during a call (see _call_watching).
        self._bus = bus

    @classmethod
    def connect(cls, address=''):
        try:
            import dbus
        except ImportError as e:
            raise HelperError('python3-dbus is needed to talk to syscare-helper: %s' % e)
        mainloop = None
        try:
            from dbus.mainloop.glib import DBusGMainLoop
            from gi.repository import GLib  # noqa: F401  (runs the loop in _call_watching)
            mainloop = DBusGMainLoop()
        except ImportError:
            pass  # no python3-gi: everything works, without progress
        try:
            if address:
                bus = dbus.bus.BusConnection(address, mainloop=mainloop)
            else:
                bus = dbus.SystemBus(mainloop=mainloop)
            obj = bus.get_object(BUS_NAME, OBJECT_PATH)
        except dbus.exceptions.DBusException as e:
            raise HelperError('cannot reach syscare-helper (%s): %s'
                              % (BUS_NAME, e.get_dbus_message() or e))
        # Long operations (activation waits for busy processes) outlast the default 25 s.
        return cls(dbus.Interface(obj, INTERFACE), bus if mainloop is not None else None)

    @staticmethod
    def _error(e):
        name = e.get_dbus_name() or ''
        msg = e.get_dbus_message() or str(e)
        kind = name.rsplit('.', 1)[-1] if name.startswith(BUS_NAME + '.Error.') else ''
        return HelperError('%s%s' % ('%s: ' % kind if kind else '', msg), kind)

    def _call(self, method, *args, **kw):
        progress = kw.get('progress')
        if progress is not None and self._bus is not None:
            return self._call_watching(method, args, kw.get('timeout', 600), progress)
        try:
            import dbus
            dbus_error = dbus.exceptions.DBusException
        except ImportError:
            dbus_error = ()
        try:
            return _plain(getattr(self._proxy, method)(*args, timeout=kw.get('timeout', 600)))
        except dbus_error as e:
            raise self._error(e)

    def _call_watching(self, method, args, timeout, progress):
        """Calls method and, until its reply, passes each Progress signal of the helper
        to progress(operation, patch, done, total). dbus-python delivers signals only
        from a main loop, so the call is made asynchronously and a GLib loop runs until
        the reply; the helper sends its signals before the reply, so none is missed."""
        from gi.repository import GLib
        loop = GLib.MainLoop()
        out = {}

        def on_progress(operation, patch, done, total):
            progress(str(operation), str(patch), int(done), int(total))

        def on_reply(*reply):
            out['reply'] = reply[0] if len(reply) == 1 else list(reply)
            loop.quit()

        def on_error(e):
            out['error'] = e
            loop.quit()

        match = self._bus.add_signal_receiver(on_progress, signal_name='Progress',
                                              dbus_interface=INTERFACE, bus_name=BUS_NAME,
                                              path=OBJECT_PATH)
        try:
            getattr(self._proxy, method)(*args, timeout=timeout, reply_handler=on_reply,
                                         error_handler=on_error)
            loop.run()
        finally:
            match.remove()
        if 'error' in out:
            raise self._error(out['error'])
        return _plain(out.get('reply'))

    def list(self):
        """Rows of dicts: uuid, name, status, patch_uuid, problem."""
        keys = ('uuid', 'name', 'status', 'patch_uuid', 'problem')
        return [dict(zip(keys, row)) for row in self._call('List')]

    def status(self, ids):
        return [dict(zip(('uuid', 'name', 'status'), row)) for row in self._call('Status', _strs(ids))]

    def info(self, ids):
        return json.loads(self._call('Info', _strs(ids)))

    def target(self, ids):
        return json.loads(self._call('Target', _strs(ids)))

    def transition(self, method, ids, force=False):
        rows = self._call(method, _strs(ids), bool(force))
        return [dict(zip(('uuid', 'name', 'status'), row)) for row in rows]

    def upgrade(self, ids, accept=False, force=False, gate=None, policy=False, progress=None):
        """One transaction in the helper; rows of dicts: uuid, name, old_status, status,
        action (APPLIED, ACTIVATED, ACCEPTED, SUPERSEDED, UNCHANGED), detail.

        progress(operation, patch, done, total), if given, hears the helper's Progress
        signals while a patch goes into or out of many processes (with python3-gi).

        gate: the health gate, {'health': [commands], 'soak': s, 'interval': s,
        'check_timeout': s} (seconds); policy: run under /etc/syscare/upgrade.conf,
        which then sets accept and the gate."""
        if policy:
            opts = {'policy': True, 'force': bool(force)}
        else:
            opts = {'accept': bool(accept), 'force': bool(force)}
        gate = gate or {}
        try:
            import dbus
            if gate.get('health'):
                opts['health'] = dbus.Array([str(h) for h in gate['health']], signature='s')
            for key in ('soak', 'interval', 'check_timeout'):
                if gate.get(key) is not None:
                    opts[key + '_ms'] = dbus.UInt64(int(gate[key] * 1000))
            opts = dbus.Dictionary(opts, signature='sv')
        except ImportError:
            if gate.get('health'):
                opts['health'] = list(gate['health'])
            for key in ('soak', 'interval', 'check_timeout'):
                if gate.get(key) is not None:
                    opts[key + '_ms'] = int(gate[key] * 1000)
        keys = ('uuid', 'name', 'old_status', 'status', 'action', 'detail')
        # The helper soaks inside the call: wait for the soak on top of the usual bound
        # (a policy run's soak is not known here: allow an hour).
        soak = (gate.get('soak') or 0) + (3600 if policy else 0)
        rows = self._call('Upgrade', _strs(ids), opts, timeout=600 + soak, progress=progress)
        return [dict(zip(keys, row)) for row in rows]

    def resolve(self, metadata_dirs=(), cves=(), advisories=(), all_patches=False, policy=False):
        """Candidates (dicts of syscarebus.Candidate, dbus/messages.go), oldest first within a target."""
        opts = {}
        if policy:
            opts['policy'] = True
        if metadata_dirs:
            opts['metadata_dirs'] = _strs(metadata_dirs)
        if cves:
            opts['cves'] = _strs(cves)
        if advisories:
            opts['advisories'] = _strs(advisories)
        if all_patches:
            opts['all'] = True
        try:
            import dbus
            opts = dbus.Dictionary(opts, signature='sv')
        except ImportError:
            pass
        return json.loads(self._call('Resolve', opts))


class ProgressLine(object):
    """Shows the helper's Progress on one terminal line redrawn in place
    ("activate victim-1.0-1/HP001-1-1/victim: 12 of 40 processes"); clear() removes it
    before the summary is printed."""

    def __init__(self, stream):
        self.stream = stream
        self.shown = False

    def __call__(self, operation, patch, done, total):
        self.stream.write('\r\033[K%s %s: %d of %d processes' % (operation, patch, done, total))
        self.stream.flush()
        self.shown = True

    def clear(self):
        if self.shown:
            self.stream.write('\r\033[K')
            self.stream.flush()
            self.shown = False


def progress_line(stream):
    """A ProgressLine on stream when it is a terminal, else None (piped output and
    logs get no control sequences)."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return ProgressLine(stream) if tty else None


def _strs(xs):
    try:
        import dbus
        return dbus.Array([str(x) for x in xs], signature='s')
    except ImportError:
        return [str(x) for x in xs]


def rpm_name(cand):
    """The patch RPM's name (NEVRA without -version-release.arch)."""
    return '%s' % '-'.join(cand['package'].rsplit('.', 1)[0].split('-')[:-2])


def target_nvr(target):
    return '%s-%s-%s' % (target['name'], target['version'], target['release'])


def patch_key(cand):
    """target-nvr/patch-version-release, the prefix of the helper's entity names."""
    return '%s/%s-%s-%s' % (target_nvr(cand['target']), cand['patch_name'],
                            cand['patch_version'], cand['patch_release'])


def matches(cand, ident):
    """Whether an operator's identifier names this candidate."""
    u = ident.upper()
    if cand.get('advisory', '').upper() == u or u in [c.upper() for c in cand.get('cves') or []]:
        return True
    key = patch_key(cand)
    short = '%s/%s' % (target_nvr(cand['target']), cand['patch_name'])
    return ident in (cand['package'], rpm_name(cand), key, short,
                     cand['package'].rsplit('.', 1)[0])


def newest_per_target(cands):
    """The helper returns candidates sorted oldest first within each target."""
    out = {}
    for c in cands:
        out[(target_nvr(c['target']), c['target'].get('arch'))] = c
    return list(out.values())


def entity_states(entities):
    """patch key (target-nvr/patch-ver-rel) -> list of entity states."""
    states = {}
    for e in entities:
        parts = e['name'].split('/')
        if len(parts) >= 2:
            states.setdefault('/'.join(parts[:2]), []).append(e['status'])
    return states


def patch_state(states):
    """One state for a patch from its entities' states: the lowest one."""
    order = [NOT_APPLIED, DEACTIVED, ACTIVED, ACCEPTED]
    known = [s for s in states if s in order]
    if not known:
        return states[0] if states else NOT_APPLIED
    return min(known, key=order.index)


def upgrade_results(keys, rows):
    """The summary of an upgrade per patch: the patches asked for with the state their
    entities reached, and SUPERSEDED for the patches they replaced."""
    results = {k: 'INSTALLED' for k in keys}
    reached = entity_states(r for r in rows if r['action'] != SUPERSEDED)
    for r in rows:
        if r['action'] == SUPERSEDED:
            results['/'.join(r['name'].split('/')[:2])] = SUPERSEDED
    for k, states in reached.items():
        results[k] = patch_state(states)
    return results


def table(rows, headers):
    widths = [len(h) for h in headers]
    for r in rows:
        widths = [max(w, len(str(c))) for w, c in zip(widths, r)]
    fmt = '  '.join('%%-%ds' % w for w in widths)
    lines = [fmt % tuple(headers)]
    lines += [fmt % tuple(str(c) for c in r) for r in rows]
    return '\n'.join(line.rstrip() for line in lines)


class HotpatchCommand(dnf.cli.Command):
    """dnf hotpatch SUBCOMMAND."""

    aliases = ('hotpatch',)
    summary = 'manage hot patches: list, install and switch them on in running programs'
    default_subcommand = None

    # Set by the plugin from hotpatch.conf.
    config = None
    # Tests replace this with a factory returning a Helper over a fake proxy.
    helper_factory = None

    @staticmethod
    def set_argparser(parser):
        parser.add_argument('subcommand', nargs='?', metavar='SUBCOMMAND',
                            help='one of: %s (hotupgrade = hotpatch upgrade)' % ', '.join(SUBCOMMANDS))
        parser.add_argument('ids', nargs='*', metavar='ID',
                            help='advisory, CVE, patch RPM name, or TARGET-NVR/PATCH')
        which = parser.add_mutually_exclusive_group()
        which.add_argument('--installed', dest='show', action='store_const', const='installed',
                           help='list installed hot patches')
        which.add_argument('--available', dest='show', action='store_const', const='available',
                           help='list hot patches the repositories offer and are not installed')
        which.add_argument('--all', dest='show', action='store_const', const='all',
                           help='list installed and available hot patches (default)')
        # --cve and --advisory are DNF's own global options (opts.cves, opts.advisory).
        parser.add_argument('--json', action='store_true', help='machine-readable output')
        parser.add_argument('--format', choices=('syscare', 'openeuler'), default='syscare',
                            help="list: openeuler prints openEuler's columns (base-pkg/hotpatch, status)")
        parser.add_argument('--force', action='store_true',
                            help='activate over a conflicting patch')
        # The health gate (install/upgrade): the helper runs the checks after activation
        # and accepts only after a healthy soak, or puts everything back.
        parser.add_argument('--health', action='append', default=[], metavar='CMD',
                            help='health check command run after activation (repeatable; '
                                 'no shell: use sh -c for one)')
        parser.add_argument('--soak', metavar='DURATION', help='keep checking for this long (e.g. 30s)')
        parser.add_argument('--interval', metavar='DURATION', help='time between two checks (default 5s)')
        parser.add_argument('--check-timeout', metavar='DURATION', dest='check_timeout',
                            help='a check running longer fails (default 10s)')
        parser.add_argument('--policy', action='store_true',
                            help='upgrade under /etc/syscare/upgrade.conf, as the upgrade timer does')
        parser.add_argument('--dry-run', action='store_true', dest='dry_run',
                            help='install/upgrade: say what would be done, change nothing')
        # openEuler's flag spellings: `dnf hotpatch --list`, `--apply ID`, ...; `--accept`
        # alone (with install/upgrade) accepts the activated patches.
        parser.add_argument('--list', nargs='?', const='installed', metavar='cves',
                            help='list installed hot patches (openEuler spelling)')
        parser.add_argument('--apply', action='append', default=[], metavar='ID',
                            help='switch an installed patch on (= apply ID)')
        parser.add_argument('--remove', action='append', default=[], metavar='ID',
                            help='switch a patch off and erase its RPM (= remove ID)')
        parser.add_argument('--active', action='append', default=[], metavar='ID',
                            help='switch a deactivated patch on again (= activate ID)')
        parser.add_argument('--deactive', action='append', default=[], metavar='ID',
                            help='switch a patch off, keeping it installed (= deactivate ID)')
        parser.add_argument('--accept', nargs='?', action='append', metavar='ID',
                            help='accept activated patches (kept across reboots)')

    def _normalize(self):
        """Folds the openEuler flag spellings into (subcommand, ids, accept)."""
        o = self.opts
        sub = o.subcommand or self.default_subcommand
        ids = list(o.ids or [])
        if sub == 'hotupgrade':
            sub = 'upgrade'
        if sub and sub not in SUBCOMMANDS and sub not in SUBCOMMAND_ALIASES:
            if self.default_subcommand:
                # `dnf hotupgrade ID`: the word is an id, not a subcommand.
                ids.insert(0, sub)
                sub = self.default_subcommand
            else:
                raise dnf.cli.CliError('unknown hotpatch subcommand %r (one of: %s)'
                                       % (sub, ', '.join(SUBCOMMANDS)))
        sub = SUBCOMMAND_ALIASES.get(sub, sub)
        accept_flag = False
        accept_ids = []
        for a in o.accept or []:
            if a is None:
                accept_flag = True
            else:
                accept_ids.append(a)
        flagged = [(name, vals) for name, vals in (('apply', o.apply), ('remove', o.remove),
                                                   ('activate', o.active),
                                                   ('deactivate', o.deactive)) if vals]
        if accept_ids and sub in ('install', 'upgrade'):
            # `install --accept ID`: argparse took the id as the flag's value.
            ids += accept_ids
            accept_flag, accept_ids = True, []
        elif accept_ids:
            flagged.append(('accept', accept_ids))
        if o.list is not None:
            flagged.append(('list', []))
        if len(flagged) > 1 or (flagged and sub):
            raise dnf.cli.CliError('give one hotpatch subcommand or one of --list, --apply, '
                                   '--remove, --active, --deactive, --accept')
        if flagged:
            sub, ids = flagged[0]
            ids = list(ids) + list(o.ids or [])
            if sub == 'list':
                self.opts.show = self.opts.show or 'installed'
                self._list_cves = (o.list == 'cves')
        if not sub:
            raise dnf.cli.CliError('hotpatch needs a subcommand: %s' % ', '.join(SUBCOMMANDS))
        if accept_flag and sub not in ('install', 'upgrade'):
            if sub == 'accept' or not ids:
                raise dnf.cli.CliError('--accept needs a patch id, or install/upgrade')
        return sub, ids, accept_flag

    def _gate(self):
        """The health gate options as the helper takes them, None without --health."""
        o = self.opts
        gate = {'health': list(o.health or [])}
        for key in ('soak', 'interval', 'check_timeout'):
            value = getattr(o, key, None)
            if value is not None:
                try:
                    gate[key] = parse_duration(value)
                except ValueError as e:
                    raise dnf.cli.CliError('--%s: %s' % (key.replace('_', '-'), e))
        if len(gate) > 1 and not gate['health']:
            raise dnf.cli.CliError('--soak, --interval and --check-timeout need --health')
        return gate if gate['health'] else None

    def configure(self):
        self._list_cves = False
        self.sub, self.ids, self.accept_flag = self._normalize()
        self.gate = self._gate()
        o = self.opts
        if (self.gate or o.policy or o.dry_run) and self.sub not in ('install', 'upgrade'):
            raise dnf.cli.CliError('--health, --soak, --policy and --dry-run are options of '
                                   'hotpatch install and upgrade')
        if o.policy and (self.gate or self.accept_flag or self.sub != 'upgrade'):
            raise dnf.cli.CliError('--policy is an option of upgrade, and takes accept and '
                                   'the health gate from /etc/syscare/upgrade.conf: give neither')
        demands = self.cli.demands
        changing = self.sub in ('install', 'upgrade', 'remove') or self.sub in TRANSITIONS
        if o.dry_run:
            changing = False
        demands.root_user = changing
        if self.sub in ('list', 'info', 'install', 'upgrade', 'remove'):
            demands.sack_activation = True
            demands.available_repos = self.sub != 'remove'
        if self.sub in ('install', 'upgrade', 'remove') and not o.dry_run:
            demands.resolving = True
            demands.allow_erasing = self.sub == 'remove'
        if self.sub in TRANSITIONS and self.sub != 'remove' and not self.ids:
            raise dnf.cli.CliError('hotpatch %s needs at least one patch id' % self.sub)
        if self.sub in ('remove', 'info') and not self.ids:
            raise dnf.cli.CliError('hotpatch %s needs at least one patch id' % self.sub)
        if self.sub == 'install' and not (self.ids or self.opts.cves or self.opts.advisory):
            raise dnf.cli.CliError('hotpatch install needs an id, --cve or --advisory')

    # ---------------------------------------------------------------- helpers

    def helper(self):
        if getattr(self, '_helper', None) is None:
            factory = self.helper_factory or Helper.connect
            self._helper = factory(self._conf('bus', ''))
        return self._helper

    def _conf(self, key, default):
        c = self.config
        if c is None or not c.has_section('main') or not c.has_option('main', key):
            return default
        if isinstance(default, bool):
            return c.getboolean('main', key)
        return c.get('main', key)

    def metadata_dirs(self):
        """The repodata directories DNF downloaded for the enabled repositories."""
        dirs = []
        self._repo_of_dir = {}
        for repo in self.base.repos.iter_enabled():
            try:
                primary = repo.get_metadata_path('primary')
            except Exception:  # repository without loaded metadata (e.g. skipped)
                continue
            if primary:
                d = os.path.dirname(primary)
                dirs.append(d)
                self._repo_of_dir[d] = repo.id
        return dirs

    def resolve(self, all_patches, cves=(), advisories=(), policy=False):
        cands = self.helper().resolve(self.metadata_dirs(), cves, advisories, all_patches, policy)
        for c in cands:
            c['repo_id'] = getattr(self, '_repo_of_dir', {}).get(c.get('repo_id'), c.get('repo_id'))
        return cands

    def print_json(self, obj):
        print(json.dumps(obj, indent=2, sort_keys=True))

    # ---------------------------------------------------------------- run

    def run(self):
        handler = getattr(self, 'run_' + self.sub, None)
        if handler is None:
            return self.run_transition()
        return handler()

    def rows(self, show):
        """list rows: installed patches (from the helper) and available ones."""
        cands = self.resolve(True, self.opts.cves, self.opts.advisory)
        by_key = {patch_key(c): c for c in cands}
        rows = []
        filtered = bool(self.opts.cves or self.opts.advisory)
        if show in ('installed', 'all'):
            states = entity_states(self.helper().list())
            for key in sorted(states):
                c = by_key.get(key)
                if c is None and filtered:
                    continue
                tnvr, patch = key.split('/', 1)
                rows.append({
                    'advisory': c['advisory'] if c else '', 'cves': c['cves'] if c else [],
                    'severity': c['severity'] if c else '',
                    'patch': rpm_name(c) if c else key, 'package': c['package'] if c else '',
                    'target': tnvr, 'state': patch_state(states[key]), 'id': key,
                })
            installed_keys = set(states)
        else:
            installed_keys = set(entity_states(self.helper().list()))
        if show in ('available', 'all'):
            for c in cands:
                if patch_key(c) in installed_keys or c.get('installed'):
                    continue
                rows.append({
                    'advisory': c['advisory'], 'cves': c['cves'], 'severity': c['severity'],
                    'patch': rpm_name(c), 'package': c['package'],
                    'target': target_nvr(c['target']), 'state': AVAILABLE, 'id': patch_key(c),
                })
        return rows

    def run_list(self):
        rows = self.rows(self.opts.show or 'all')
        if self.opts.json:
            self.print_json(rows)
            return
        if getattr(self.opts, 'format', '') == 'openeuler' and not self._list_cves:
            print(table([(r['id'], r['state']) for r in rows], ('base-pkg/hotpatch', 'status')))
            return
        if self._list_cves:
            out = [(cve, r['patch'], r['state']) for r in rows for cve in r['cves']]
            print(table(out, ('CVE-ID', 'PATCH', 'STATUS')))
            return
        out = [(r['advisory'] or '-', ','.join(r['cves']) or '-', r['severity'] or '-',
                r['patch'], r['target'], r['state']) for r in rows]
        print(table(out, ('ADVISORY', 'CVES', 'SEVERITY', 'PATCH', 'TARGET', 'STATE')))

    def run_info(self):
        cands = self.resolve(True)
        installed = entity_states(self.helper().list())
        found = []
        for ident in self.ids:
            hits = [c for c in cands if matches(c, ident)]
            if not hits:
                # An installed patch no repository offers any more: the helper knows it.
                try:
                    found.extend({'installed': True, 'helper': p} for p in self.helper().info([ident]))
                    continue
                except HelperError:
                    raise dnf.exceptions.Error('no hot patch matches %r' % ident)
            for c in hits:
                c = dict(c)
                key = patch_key(c)
                if key in installed:
                    c['state'] = patch_state(installed[key])
                    try:
                        c['helper'] = self.helper().info([key])
                    except HelperError:
                        pass
                else:
                    c['state'] = AVAILABLE
                found.append(c)
        if self.opts.json:
            self.print_json(found)
            return
        for c in found:
            if 'package' not in c:
                for p in c['helper']:
                    print('%-12s: %s-%s-%s' % ('Patch', p.get('name'), p.get('version'), p.get('release')))
                    print('%-12s: %s' % ('Target', target_nvr(p.get('target', {}))))
                print()
                continue
            for label, value in (('Advisory', c['advisory']), ('Type', c['type']),
                                 ('Severity', c['severity']), ('Title', c['title']),
                                 ('CVEs', ' '.join(c['cves'])), ('Package', c['package']),
                                 ('Patch', '%s-%s-%s' % (c['patch_name'], c['patch_version'],
                                                         c['patch_release'])),
                                 ('Target', '%s.%s' % (target_nvr(c['target']), c['target']['arch'])),
                                 ('Repository', c['repo_id']), ('State', c['state'])):
                print('%-12s: %s' % (label, value or '-'))
            print()

    # install / upgrade: mark the RPMs here, DNF runs the transaction, then
    # run_transaction switches the patches on.

    def run_install(self):
        if self.ids:
            cands = [c for c in self.resolve(True) if any(matches(c, i) for i in self.ids)]
            for i in self.ids:
                if not any(matches(c, i) for c in cands):
                    raise dnf.exceptions.Error('no hot patch for this host matches %r' % i)
            if self.opts.cves or self.opts.advisory:
                extra = self.resolve(False, self.opts.cves, self.opts.advisory)
                cands += [c for c in extra if c not in cands]
            cands = newest_per_target(cands)
        else:
            cands = self.resolve(False, self.opts.cves, self.opts.advisory)
            if not cands:
                raise dnf.exceptions.Error('no hot patch for this host matches %s'
                                           % ' '.join(self.opts.cves + self.opts.advisory))
        self._prepare(cands)

    def run_upgrade(self):
        self.skipped = None
        try:
            cands = self.resolve(False, self.opts.cves, self.opts.advisory, self.opts.policy)
        except HelperError as e:
            if e.kind != 'OutsideWindow' or self.opts.dry_run:
                raise
            # The helper keeps the run in its history and logs it; nothing to install.
            self.skipped = e
            self.plan, self.to_install = [], []
            return
        if self.ids:
            cands = [c for c in cands if any(matches(c, i) for i in self.ids)]
        self._prepare(cands)

    def _prepare(self, cands):
        helper = self.helper()
        states = entity_states(helper.list())
        self.plan = []
        self.to_install = []
        avail = self.base.sack.query().available()
        for c in cands:
            key = patch_key(c)
            state = patch_state(states[key]) if key in states else None
            wants_accept = (self.accept_flag or self._conf('accept', False)
                            or (c.get('policy') or {}).get('accept', False))
            if state in (ACTIVED, ACCEPTED) and not wants_accept:
                continue
            if state == ACCEPTED:
                continue
            if key not in states and not c.get('installed'):
                pkgs = avail.filter(nevra=c['package']).run()
                if not pkgs:
                    raise dnf.exceptions.Error('%s is not in the enabled repositories' % c['package'])
                if not self.opts.dry_run:
                    self.base.package_install(pkgs[0], strict=True)
                self.to_install.append(c['package'])
            self.plan.append(c)
        if self.opts.dry_run:
            self._print_dry_run()
        elif not self.plan:
            logger.info('No hot patch to install: every offered hot patch is already active.')

    def _print_dry_run(self):
        """What install/upgrade would do, changing nothing."""
        if not self.plan:
            print('dry run: no hot patch to install or activate')
            return
        accept = self.accept_flag or self._conf('accept', False)
        gate = self.gate or {}
        for c in self.plan:
            pol = c.get('policy')
            if pol is not None:
                accept_c, health, soak = pol.get('accept'), pol.get('health') or [], pol.get('soak') or '0s'
            else:
                accept_c, health, soak = accept, gate.get('health') or [], '%gs' % gate.get('soak', 0)
            what = 'install and activate' if c['package'] in self.to_install else 'activate'
            line = 'dry run: would %s %s (%s, %s, %s) for %s' % (
                what, rpm_name(c), c['advisory'] or '-', c['severity'] or '-',
                ','.join(c['cves']) or '-', target_nvr(c['target']))
            if health:
                line += '; health: %s over %s' % (' ; '.join(health), soak)
            line += '; then %s' % ('ACCEPTED' if accept_c else 'ACTIVED')
            print(line)

    def run_transaction(self):
        if self.sub in ('install', 'upgrade'):
            self._activate_plan()

    def _activate_plan(self):
        if self.opts.dry_run:
            return
        if self.opts.policy and not getattr(self, 'plan', None):
            # The helper records the run (nothing to do, or outside the window) and logs
            # its one-line summary; the timer's journal shows the same line.
            try:
                self.helper().upgrade([], force=self.opts.force, policy=True)
            except HelperError as e:
                if e.kind != 'OutsideWindow':
                    raise
                logger.info('hot patch upgrade skipped: %s', e)
                return
            logger.info('hot patch upgrade: nothing to do')
            return
        if not getattr(self, 'plan', None):
            return
        if self.base.conf.downloadonly:
            return
        accept = self.accept_flag or self._conf('accept', False)
        keys = [patch_key(c) for c in self.plan]
        show = progress_line(sys.stderr)
        try:
            # Supersede, apply, health gate, accept: one transaction, rolled back by the helper.
            try:
                rows = self.helper().upgrade(keys, accept, self.opts.force, gate=self.gate,
                                             policy=self.opts.policy, progress=show)
            finally:
                if show:
                    show.clear()
        except HelperError as e:
            self._rollback(e, keys)
            raise dnf.exceptions.Error('hot patch activation failed: %s (state restored, '
                                       'installed hot patch packages removed)' % e)
        self._summary(upgrade_results(keys, rows))

    def _rollback(self, err, keys):
        """The helper has put every patch back; DNF erases the RPMs this run installed."""
        logger.error('hot patch activation failed: %s; rolling back', err)
        if self.to_install:
            try:
                self._erase(self.to_install)
            except Exception as e:  # report, never hide the original failure
                logger.error('removing the hot patch packages installed by this run: %s', e)
        self._summary({k: 'FAILED' for k in keys})

    def _erase(self, nevras):
        base = self.base
        base.reset(goal=True, sack=True)
        base.fill_sack(load_system_repo=True, load_available_repos=False)
        q = base.sack.query().installed()
        for n in nevras:
            for pkg in q.filter(nevra=n).run():
                base.package_remove(pkg)
        base.resolve(allow_erasing=True)
        base.do_transaction()

    def _summary(self, results):
        rows = sorted(results.items())
        if self.opts.json:
            self.print_json([{'id': k, 'result': v} for k, v in rows])
        else:
            print(table(rows, ('HOT PATCH', 'RESULT')))

    # apply / activate / deactivate / accept / remove

    def run_transition(self):
        helper = self.helper()
        method = TRANSITIONS[self.sub]
        if self.sub == 'remove':
            targets = helper.target(self.ids)
        rows = helper.transition(method, self.ids, self.opts.force)
        if self.opts.json:
            self.print_json(rows)
        else:
            print(table([(r['name'], r['status']) for r in rows], ('ENTITY', 'STATUS')))
        if self.sub == 'remove':
            q = self.base.sack.query().installed()
            for t in targets:
                # "patch" is name-version-release of the patch, as in the RPM's NVR.
                parts = t.get('patch', '').rsplit('-', 2)
                if len(parts) != 3:
                    continue
                tg = t.get('target', {})
                name = 'patch-%s-%s-%s-%s' % (tg.get('name'), tg.get('version'),
                                              tg.get('release'), parts[0])
                for pkg in q.filter(name=name, version=parts[1], release=parts[2]).run():
                    self.base.package_remove(pkg)

    run_apply = run_activate = run_deactivate = run_accept = run_remove = run_transition


class HotupgradeCommand(HotpatchCommand):
    """dnf hotupgrade: the same as dnf hotpatch upgrade (openEuler's command name)."""

    aliases = ('hotupgrade',)
    summary = 'install and activate every hot patch the repositories offer (= hotpatch upgrade)'
    default_subcommand = 'upgrade'


class Hotpatch(dnf.Plugin):
    """Registers the commands and reads /etc/dnf/plugins/hotpatch.conf."""

    name = 'hotpatch'

    def __init__(self, base, cli):
        super(Hotpatch, self).__init__(base, cli)
        if cli is None:
            return
        try:
            conf = self.read_config(base.conf)
        except Exception as e:  # a broken config must not break every dnf command
            logger.warning('hotpatch: reading hotpatch.conf: %s', e)
            conf = None
        HotpatchCommand.config = conf
        cli.register_command(HotpatchCommand)
        cli.register_command(HotupgradeCommand)
