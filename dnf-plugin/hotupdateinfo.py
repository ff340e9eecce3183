# dnf hot-updateinfo: openEuler's command for the advisories of hot patches, with
# openEuler's columns. It is a view of what `dnf hotpatch list` knows (the helper
# resolves the repositories' advisories for this host), kept apart from hotpatch.py so
# that the command and its layout stay in one place.
"""DNF 4 plugin providing `dnf hot-updateinfo` (openEuler's spelling)."""

import importlib

import dnf
import dnf.cli

# hotpatch.py sits next to this file; DNF imports both into its dynamic plugin package
# (the unit tests put the directory on sys.path instead).
try:
    hotpatch = importlib.import_module('dnf.plugin.dynamic.hotpatch')
except ImportError:
    import hotpatch

# DNF's updateinfo prints the type of a security advisory as "Sec." after its severity.
TYPE_LABELS = {'security': 'Sec.', 'bugfix': 'Bugfix', 'enhancement': 'Enhancement',
               'newpackage': 'Newpackage'}


def severity_type(row):
    """'Important/Sec.', as `dnf updateinfo list` and openEuler's hot-updateinfo show it."""
    kind = TYPE_LABELS.get(row.get('type') or 'security', row.get('type') or '-')
    return '%s/%s' % (row.get('severity') or 'None', kind)


def base_hotpatch(row):
    """openEuler's base-pkg/hotpatch column: TARGET-NVR/PATCH-VER-REL."""
    return row['id']


class HotUpdateinfoCommand(hotpatch.HotpatchCommand):
    """dnf hot-updateinfo list [cves] | info ID...: hot patch advisories, openEuler layout."""

    aliases = ('hot-updateinfo',)
    summary = 'show the advisories of hot patches (openEuler: hot-updateinfo)'

    @staticmethod
    def set_argparser(parser):
        parser.add_argument('subcommand', nargs='?', default='list', choices=('list', 'info'),
                            metavar='{list,info}', help='list advisories (default), or info')
        parser.add_argument('ids', nargs='*', metavar='cves|ID',
                            help='list: "cves" lists one line per CVE; info: advisory, CVE or patch')
        parser.add_argument('--json', action='store_true', help='machine-readable output')

    def configure(self):
        self.sub = self.opts.subcommand
        self.ids = list(self.opts.ids)
        self.opts.show = 'all'
        self._list_cves = False
        if self.sub == 'list' and self.ids not in ([], ['cves']):
            raise dnf.cli.CliError('hot-updateinfo list takes only "cves"')
        if self.sub == 'info' and not self.ids:
            raise dnf.cli.CliError('hot-updateinfo info needs an advisory, CVE or patch')
        demands = self.cli.demands
        demands.sack_activation = True
        demands.available_repos = True

    def run(self):
        if self.sub == 'info':
            return self.run_info()
        rows = [r for r in self.rows('all') if r['advisory']]
        for r in rows:
            r['type'] = r.get('type') or self._types().get(r['advisory'], '')
        if self.opts.json:
            self.print_json(rows)
            return
        if self.ids == ['cves']:
            out = [(cve, severity_type(r), base_hotpatch(r), r['state']) for r in rows for cve in r['cves']]
            print(hotpatch.table(out, ('CVE-ID', 'SEVERITY', 'BASE-PKG/HOTPATCH', 'STATUS')))
            return
        out = [(r['advisory'], severity_type(r), base_hotpatch(r), r['state']) for r in rows]
        print(hotpatch.table(out, ('ADVISORY', 'SEVERITY', 'BASE-PKG/HOTPATCH', 'STATUS')))

    def _types(self):
        """Advisory id -> type, from what the helper resolved."""
        if getattr(self, '_type_of', None) is None:
            self._type_of = {c['advisory']: c.get('type', '') for c in self.resolve(True)}
        return self._type_of


class HotUpdateinfo(dnf.Plugin):
    """Registers `dnf hot-updateinfo`; its configuration is hotpatch.conf's."""

    name = 'hotupdateinfo'

    def __init__(self, base, cli):
        super(HotUpdateinfo, self).__init__(base, cli)
        if cli is not None:
            cli.register_command(HotUpdateinfoCommand)
