# Sourced by test.sh, demo.sh and bench.sh: installs the Debian packages whose
# commands are missing.
#
#   install_missing CMD:PACKAGE ...
#
# CMD is a command looked up on PATH, or an absolute path that must be executable.
install_missing() {
    local need=() spec cmd pkg
    for spec in "$@"; do
        cmd=${spec%%:*}
        pkg=${spec#*:}
        if [[ $cmd == /* ]]; then
            [ -x "$cmd" ] || need+=("$pkg")
        else
            command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
        fi
    done
    [ ${#need[@]} -eq 0 ] && return 0
    echo "==> installing: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}
