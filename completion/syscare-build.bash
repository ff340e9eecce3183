# bash completion of syscare-build(1) (and of `syscare build`). The options are read from
# `syscare-build --help`; the files each takes are completed by their kind.

_syscare_build() {
    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}
    case $prev in
    --source) COMPREPLY=($(compgen -f -X '!*.src.rpm' -- "$cur") $(compgen -d -- "$cur")); return ;;
    --debuginfo) COMPREPLY=($(compgen -f -X '!*.rpm' -- "$cur") $(compgen -d -- "$cur")); return ;;
    --patch) COMPREPLY=($(compgen -f -X '!*.@(patch|diff)' -- "$cur") $(compgen -d -- "$cur")); return ;;
    --output | --workdir | --kernel-cache) COMPREPLY=($(compgen -d -- "$cur")); return ;;
    --kernel-config | --debug-file | -o) COMPREPLY=($(compgen -f -- "$cur")); return ;;
    --patch-name | --patch-version | --patch-release | --patch-description | --jobs) return ;;
    esac
    if [[ $cur == -* ]]; then
        local opts
        opts=$(syscare-build --help 2>/dev/null | sed -n 's/^    \(-[a-z]\), \(--[a-z-]*\).*/\1 \2/p; s/^    \(--[a-z-]*\).*/\1/p')
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
        return
    fi
    COMPREPLY=($(compgen -f -- "$cur"))
}
shopt -s extglob
complete -F _syscare_build syscare-build
