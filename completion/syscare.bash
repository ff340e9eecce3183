# bash completion of syscare(8). The commands and options are read from `syscare --help`
# and the patch names from the helper (`syscare list`), so nothing here goes stale.

# _syscare_help_words prints the commands (indented "  name ...") and options of
# syscare's help.
_syscare_help_words() {
    syscare --help 2>/dev/null | sed -n -e 's/^  \([a-z][a-z-]*\)\( .*\)\{0,1\}$/\1/p' \
        -e 's/^  \(-[a-z]\), \(--[a-z-]*\).*/\1 \2/p' -e 's/^  \(--[a-z-]*\).*/\1/p'
}

# _syscare_patches prints the installed patches' names, as the helper lists them.
_syscare_patches() {
    local bus=()
    [ -n "$1" ] && bus=(--bus "$1")
    syscare "${bus[@]}" list 2>/dev/null | awk 'NR > 1 && NF >= 3 { print $2 }'
}

_syscare() {
    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}
    local i cmd= bus=
    for ((i = 1; i < COMP_CWORD; i++)); do
        case ${COMP_WORDS[i]} in
        --bus) bus=${COMP_WORDS[i+1]}; ((i++)) ;;
        --bus=*) bus=${COMP_WORDS[i]#--bus=} ;;
        -*) ;;
        *) cmd=${COMP_WORDS[i]}; break ;;
        esac
    done
    if [ "$prev" = --bus ]; then
        COMPREPLY=($(compgen -W "system session" -- "$cur"))
        return
    fi
    case $cmd in
    build)
        # syscare build ARGS is syscare-build ARGS.
        if declare -F _syscare_build >/dev/null || { [ -r "${BASH_SOURCE[0]%/*}/syscare-build" ] &&
            . "${BASH_SOURCE[0]%/*}/syscare-build"; } || { [ -r "${BASH_SOURCE[0]%/*}/syscare-build.bash" ] &&
            . "${BASH_SOURCE[0]%/*}/syscare-build.bash"; }; then
            _syscare_build
        fi
        return ;;
    "")
        COMPREPLY=($(compgen -W "$(_syscare_help_words)" -- "$cur"))
        return ;;
    list | save | rescan | repo)
        # No identifiers: only options.
        [[ $cur == -* ]] || return ;;
    *)
        if [[ $cur != -* ]]; then
            COMPREPLY=($(compgen -W "$(_syscare_patches "$bus")" -- "$cur"))
            return
        fi ;;
    esac
    COMPREPLY=($(compgen -W "$(_syscare_help_words | grep -- '^-')" -- "$cur"))
}
complete -F _syscare syscare
