# bash completion for batchctl(1)
_batchctl_jobs()
{
    # Job names from the daemon; silent when it cannot be reached.
    batchctl "${global_opts[@]}" list -q 2>/dev/null
}

_batchctl_files()
{
    if declare -F _filedir >/dev/null; then
        _filedir
    else
        COMPREPLY=($(compgen -f -- "$cur"))
    fi
}

_batchctl()
{
    local cur prev words cword
    if declare -F _init_completion >/dev/null; then
        _init_completion || return
    else # without the bash-completion package
        words=("${COMP_WORDS[@]}")
        cword=$COMP_CWORD
        cur=${COMP_WORDS[COMP_CWORD]}
        prev=${COMP_WORDS[COMP_CWORD - 1]}
    fi

    local commands="status list show watch submit wait validate retry cancel pause resume reload metrics help"
    local states="queued validating creating_dataset uploading importing creating_batch setting_up processing ready failed cancelled finished unfinished"
    local -a global_opts=()
    local cmd="" i
    for ((i = 1; i < cword; i++)); do
        case ${words[i]} in
        -c | --config | -s | --socket)
            global_opts+=("${words[i]}" "${words[i + 1]}")
            ((i++))
            ;;
        --json) ;;
        -*) ;;
        *)
            cmd=${words[i]}
            break
            ;;
        esac
    done

    case $prev in
    -c | --config)
        _batchctl_files
        return
        ;;
    -s | --socket)
        _batchctl_files
        return
        ;;
    --state)
        COMPREPLY=($(compgen -W "$states" -- "$cur"))
        return
        ;;
    --name | --limit | --timeout)
        return
        ;;
    esac

    if [[ -z $cmd ]]; then
        if [[ $cur == -* ]]; then
            COMPREPLY=($(compgen -W "-c --config -s --socket --json -h --help -V --version" -- "$cur"))
        else
            COMPREPLY=($(compgen -W "$commands" -- "$cur"))
        fi
        return
    fi

    case $cmd in
    list)
        COMPREPLY=($(compgen -W "--state --limit -q --quiet --json --help" -- "$cur"))
        ;;
    retry)
        if [[ $cur == -* ]]; then
            COMPREPLY=($(compgen -W "--failed --json --help" -- "$cur"))
        else
            COMPREPLY=($(compgen -W "$(_batchctl_jobs)" -- "$cur"))
        fi
        ;;
    wait)
        if [[ $cur == -* ]]; then
            COMPREPLY=($(compgen -W "--timeout --json --help" -- "$cur"))
        else
            COMPREPLY=($(compgen -W "$(_batchctl_jobs)" -- "$cur"))
        fi
        ;;
    show | cancel)
        if [[ $cur == -* ]]; then
            COMPREPLY=($(compgen -W "--json --help" -- "$cur"))
        else
            COMPREPLY=($(compgen -W "$(_batchctl_jobs)" -- "$cur"))
        fi
        ;;
    submit)
        if [[ $cur == -* ]]; then
            COMPREPLY=($(compgen -W "--name --wait --timeout --json --help" -- "$cur"))
        else
            _batchctl_files
        fi
        ;;
    validate)
        if [[ $cur == -* ]]; then
            COMPREPLY=($(compgen -W "--json --help" -- "$cur"))
        else
            _batchctl_files
        fi
        ;;
    *)
        COMPREPLY=($(compgen -W "--json --help" -- "$cur"))
        ;;
    esac
} && complete -F _batchctl batchctl
