# Sourced by test.sh and demo.sh: helpers shared by the project's scripts.

# quietly LABEL CMD...: runs CMD with its output in a log; prints only the last line when it
# succeeds, and the errors (or the log's end) when it fails, so a failed build says why.
quietly() {
    local label=$1 log status
    shift
    log=$(mktemp)
    set +e
    "$@" >"$log" 2>&1
    status=$?
    set -e
    if [ "$status" = 0 ]; then
        tail -1 "$log"
    else
        echo "$label failed (exit $status):" >&2
        if grep -q -E '^error' "$log"; then
            grep -E -A12 '^error' "$log" | head -60 >&2
        else
            tail -30 "$log" >&2
        fi
    fi
    rm -f "$log"
    return "$status"
}
