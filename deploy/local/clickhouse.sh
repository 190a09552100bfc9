#!/usr/bin/env bash
# Project-local ClickHouse server for development and tests (Debian's clickhouse-server, 18.16).
#
#   deploy/local/clickhouse.sh install   install clickhouse-server/-client from Debian if missing
#   deploy/local/clickhouse.sh start     install if needed, start a daemon on 127.0.0.1, wait for it
#   deploy/local/clickhouse.sh stop      stop the daemon started from this data folder
#   deploy/local/clickhouse.sh status    print running/stopped; exit 0 if running, 3 if not
#   deploy/local/clickhouse.sh client …  clickhouse-client on the configured port, with the rest
#
# Environment:
#   CH_TCP_PORT          native protocol port      (default 9000)
#   CH_HTTP_PORT         HTTP port                 (default 8123)
#   CH_INTERSERVER_PORT  interserver HTTP port     (default 9009)
#   CH_DATA_DIR          config, data, logs, pid   (default <repo>/.data/clickhouse)
#   CH_START_TIMEOUT     seconds to wait for start (default 60)
#   CH_USERS_D           a folder of users.d/*.xml files to add (e.g. deploy/config/clickhouse/clickhouse-18.16,
#                        the per-command lambda users; their passwords come from this environment)
#   CH_TCP_PORT_SECURE   native protocol over TLS  (default: none; needs the two below)
#   CH_TLS_CERT          the server's certificate, PEM (for CH_TCP_PORT_SECURE)
#   CH_TLS_KEY           its private key, PEM
#
# Everything the server writes lives in CH_DATA_DIR; the config is generated there on every start.
# Users: `default` (no password, full rights) and `analyst` (password `analyst`, read-only).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CH_TCP_PORT="${CH_TCP_PORT:-9000}"
CH_HTTP_PORT="${CH_HTTP_PORT:-8123}"
CH_INTERSERVER_PORT="${CH_INTERSERVER_PORT:-9009}"
CH_DATA_DIR="${CH_DATA_DIR:-$ROOT/.data/clickhouse}"
CH_START_TIMEOUT="${CH_START_TIMEOUT:-60}"
CH_TCP_PORT_SECURE="${CH_TCP_PORT_SECURE:-}"
CH_TLS_CERT="${CH_TLS_CERT:-}"
CH_TLS_KEY="${CH_TLS_KEY:-}"

mkdir -p "$CH_DATA_DIR"
DATA="$(cd "$CH_DATA_DIR" && pwd)"
CONFIG="$DATA/config.xml"
USERS="$DATA/users.xml"
PIDFILE="$DATA/clickhouse-server.pid"
LOGDIR="$DATA/log"

log() { printf 'clickhouse.sh: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

# Debian installs the server into /usr/sbin, which is not on a normal user's PATH.
server_bin() {
    if command -v clickhouse-server >/dev/null 2>&1; then
        command -v clickhouse-server
    elif [ -x /usr/sbin/clickhouse-server ]; then
        echo /usr/sbin/clickhouse-server
    else
        return 1
    fi
}
client_bin() { command -v clickhouse-client 2>/dev/null || { [ -x /usr/bin/clickhouse-client ] && echo /usr/bin/clickhouse-client; }; }

cmd_install() {
    if server_bin >/dev/null && client_bin >/dev/null; then
        return 0
    fi
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || die "clickhouse-server is missing and this is not root and there is no sudo"
        sudo=(sudo -n)
    fi
    log "installing clickhouse-server and clickhouse-client from Debian"
    # Keep the package's own service from starting on port 9000 (it would collide with this one):
    # a policy-rc.d that denies every start, only for the install and only if there is none yet.
    local policy=/usr/sbin/policy-rc.d added_policy=0
    if [ ! -e "$policy" ]; then
        "${sudo[@]}" sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy"
        added_policy=1
    fi
    local rc=0
    {
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -qq &&
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q \
            --no-install-recommends -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
            clickhouse-server clickhouse-client </dev/null
    } || rc=$?
    if [ "$added_policy" = 1 ]; then "${sudo[@]}" rm -f "$policy"; fi
    [ "$rc" -eq 0 ] || die "apt-get failed (exit $rc)"
    server_bin >/dev/null && client_bin >/dev/null || die "clickhouse-server/clickhouse-client still missing after install"
}

# pid of the server started from this data folder, if it is alive.
our_pid() {
    [ -s "$PIDFILE" ] || return 1
    local pid
    pid="$(tr -dc '0-9' < "$PIDFILE")"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    # Guard against a recycled pid: it must be a clickhouse-server.
    grep -q clickhouse "/proc/$pid/cmdline" 2>/dev/null || [ ! -d /proc ] || return 1
    echo "$pid"
}

answers() {
    local client
    client="$(client_bin)" || return 1
    "$client" --host 127.0.0.1 --port "$CH_TCP_PORT" --connect_timeout 1 -q 'SELECT 1' >/dev/null 2>&1
}

# The secure native port and the server's TLS settings, when CH_TCP_PORT_SECURE is set.
secure_config() {
    [ -n "$CH_TCP_PORT_SECURE" ] || return 0
    [ -r "$CH_TLS_CERT" ] && [ -r "$CH_TLS_KEY" ] || die "CH_TCP_PORT_SECURE needs CH_TLS_CERT and CH_TLS_KEY (readable PEM files)"
    cat <<EOF
    <tcp_port_secure>$CH_TCP_PORT_SECURE</tcp_port_secure>
    <openSSL>
        <server>
            <certificateFile>$CH_TLS_CERT</certificateFile>
            <privateKeyFile>$CH_TLS_KEY</privateKeyFile>
            <verificationMode>none</verificationMode>
            <loadDefaultCAFile>false</loadDefaultCAFile>
            <cacheSessions>true</cacheSessions>
            <disableProtocols>sslv2,sslv3,tlsv1,tlsv1_1</disableProtocols>
            <preferServerCiphers>true</preferServerCiphers>
        </server>
    </openSSL>
EOF
}

write_config() {
    mkdir -p "$DATA/data" "$DATA/tmp" "$DATA/user_files" "$DATA/format_schemas" "$LOGDIR"
    local secure
    secure="$(secure_config)"
    cat > "$CONFIG" <<EOF
<?xml version="1.0"?>
<!-- Generated by deploy/local/clickhouse.sh on every start; edit the script, not this file. -->
<yandex>
    <logger>
        <level>information</level>
        <log>$LOGDIR/clickhouse-server.log</log>
        <errorlog>$LOGDIR/clickhouse-server.err.log</errorlog>
        <size>100M</size>
        <count>3</count>
    </logger>

    <listen_host>127.0.0.1</listen_host>
    <tcp_port>$CH_TCP_PORT</tcp_port>
    <http_port>$CH_HTTP_PORT</http_port>
    <interserver_http_port>$CH_INTERSERVER_PORT</interserver_http_port>
    <interserver_http_host>127.0.0.1</interserver_http_host>
$secure

    <path>$DATA/data/</path>
    <tmp_path>$DATA/tmp/</tmp_path>
    <user_files_path>$DATA/user_files/</user_files_path>
    <format_schema_path>$DATA/format_schemas/</format_schema_path>

    <users_config>$USERS</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>

    <max_connections>1024</max_connections>
    <keep_alive_timeout>3</keep_alive_timeout>
    <max_concurrent_queries>100</max_concurrent_queries>
    <uncompressed_cache_size>1073741824</uncompressed_cache_size>
    <mark_cache_size>1073741824</mark_cache_size>

    <!-- A Kafka engine table with no committed offset starts at the beginning of the topic. -->
    <kafka>
        <auto_offset_reset>smallest</auto_offset_reset>
    </kafka>

    <query_log>
        <database>system</database>
        <table>query_log</table>
        <partition_by>toYYYYMM(event_date)</partition_by>
        <flush_interval_milliseconds>7500</flush_interval_milliseconds>
    </query_log>
</yandex>
EOF
    cat > "$USERS" <<'EOF'
<?xml version="1.0"?>
<!-- Generated by deploy/local/clickhouse.sh on every start; edit the script, not this file. -->
<yandex>
    <profiles>
        <default>
            <max_memory_usage>10000000000</max_memory_usage>
            <use_uncompressed_cache>0</use_uncompressed_cache>
            <load_balancing>random</load_balancing>
        </default>
        <!-- Read-only: SELECT only, capped; a result over the cap fails instead of being cut. -->
        <analyst>
            <readonly>1</readonly>
            <max_execution_time>60</max_execution_time>
            <max_result_rows>1000000</max_result_rows>
            <max_result_bytes>1000000000</max_result_bytes>
            <result_overflow_mode>throw</result_overflow_mode>
            <max_memory_usage>4000000000</max_memory_usage>
        </analyst>
    </profiles>

    <users>
        <default>
            <password></password>
            <networks>
                <ip>::1</ip>
                <ip>127.0.0.1</ip>
            </networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
        <analyst>
            <password>analyst</password>
            <networks>
                <ip>::1</ip>
                <ip>127.0.0.1</ip>
            </networks>
            <profile>analyst</profile>
            <quota>default</quota>
        </analyst>
    </users>

    <quotas>
        <default>
            <interval>
                <duration>3600</duration>
                <queries>0</queries>
                <errors>0</errors>
                <result_rows>0</result_rows>
                <read_rows>0</read_rows>
                <execution_time>0</execution_time>
            </interval>
        </default>
    </quotas>
</yandex>
EOF
}

# users.d beside users.xml: the files of CH_USERS_D, if set (18.16 merges users.d/*.xml).
write_users_d() {
    rm -rf "$DATA/users.d"
    [ -n "${CH_USERS_D:-}" ] || return 0
    mkdir -p "$DATA/users.d"
    cp "$CH_USERS_D"/*.xml "$DATA/users.d/"
}

cmd_start() {
    local pid
    if pid="$(our_pid)"; then
        log "already running (pid $pid) on 127.0.0.1:$CH_TCP_PORT, data in $DATA"
        return 0
    fi
    cmd_install
    if answers; then
        log "a ClickHouse server already answers on 127.0.0.1:$CH_TCP_PORT (not started from $DATA); using it"
        return 0
    fi
    local server
    server="$(server_bin)"
    write_config
    write_users_d
    rm -f "$PIDFILE"
    local started=$SECONDS
    # The server runs as the current user (root works on 18.16); --daemon forks, detaches from the
    # terminal and writes the pid file itself. stdout/stderr of the early start go to start.log.
    (cd "$DATA" && "$server" --config-file="$CONFIG" --pid-file="$PIDFILE" --daemon \
        </dev/null >>"$LOGDIR/start.log" 2>&1) || {
        tail -n 20 "$LOGDIR/start.log" "$LOGDIR/clickhouse-server.err.log" 2>/dev/null >&2 || true
        die "clickhouse-server failed to start"
    }
    local seen=""
    while ! answers; do
        if [ $((SECONDS - started)) -ge "$CH_START_TIMEOUT" ]; then
            tail -n 30 "$LOGDIR/clickhouse-server.err.log" "$LOGDIR/start.log" 2>/dev/null >&2 || true
            die "no answer on 127.0.0.1:$CH_TCP_PORT after ${CH_START_TIMEOUT}s (logs in $LOGDIR)"
        fi
        # The daemon may have exited already (a port in use, a bad config; it removes its pid
        # file when it exits): fail fast then.
        if [ -z "$seen" ] && [ -s "$PIDFILE" ]; then seen="$(tr -dc '0-9' < "$PIDFILE")"; fi
        if [ -n "$seen" ] && ! kill -0 "$seen" 2>/dev/null; then
            grep -h '<Error>\|<Fatal>\|Exception' "$LOGDIR/clickhouse-server.err.log" "$LOGDIR/stderr.log" \
                "$LOGDIR/start.log" 2>/dev/null | tail -n 5 >&2 || true
            die "clickhouse-server exited during start (logs in $LOGDIR)"
        fi
        sleep 0.5
    done
    pid="$(our_pid || echo '?')"
    log "started in $((SECONDS - started))s (pid $pid): tcp 127.0.0.1:$CH_TCP_PORT${CH_TCP_PORT_SECURE:+, tls 127.0.0.1:$CH_TCP_PORT_SECURE}, http http://127.0.0.1:$CH_HTTP_PORT, data in $DATA"
    echo "127.0.0.1:$CH_TCP_PORT"
}

cmd_stop() {
    local pid
    if ! pid="$(our_pid)"; then
        rm -f "$PIDFILE"
        log "not running (data in $DATA)"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    local i
    for i in $(seq 1 120); do   # 60 s
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "pid $pid did not stop in 60s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
        while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
    fi
    rm -f "$PIDFILE"
    log "stopped (pid $pid)"
}

cmd_status() {
    local pid
    if pid="$(our_pid)" && answers; then
        echo "running (pid $pid) on 127.0.0.1:$CH_TCP_PORT, data in $DATA"
        return 0
    elif [ -n "${pid:-}" ]; then
        echo "starting or unresponsive (pid $pid) on 127.0.0.1:$CH_TCP_PORT, data in $DATA"
        return 3
    elif answers; then
        echo "running on 127.0.0.1:$CH_TCP_PORT (a server not started from $DATA)"
        return 0
    fi
    echo "stopped"
    return 3
}

cmd_client() {
    local client
    client="$(client_bin)" || die "clickhouse-client is not installed (run: $0 install)"
    exec "$client" --host 127.0.0.1 --port "$CH_TCP_PORT" "$@"
}

case "${1:-}" in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    client) shift; cmd_client "$@" ;;
    *) echo "usage: $0 start|stop|status|install|client [args…]" >&2; exit 2 ;;
esac
