#!/usr/bin/env bash
# A redis-cli transcript test: what a person (or a shell script) sees from one Redis-protocol
# endpoint, compared byte for byte with what a real redis-server 7 prints.
#
#     cluster-tests/resp_cli.sh HOST PORT
#
# Sections:
#   1. redis-cli with stdout not a terminal: its raw form, one value per line, nil as an empty
#      line, errors as their text followed by an empty line (that is how redis-cli prints them).
#   2. redis-cli --no-raw: the formatted form a terminal shows ("(nil)", "(integer) 1", "1) ...").
#   3. RESP3: HELLO 3, and redis-cli -3 (maps, sets, nulls).
#   4. Several commands piped on stdin, answered in order on one connection.
#   5. Raw protocol over bash's /dev/tcp: inline and multibulk requests, and the exact reply bytes
#      LiveKit's client depends on (null bulk, null EXEC after a WATCH conflict, NOSCRIPT,
#      WRONGTYPE, EXECABORT, pub/sub frames) in RESP2 and RESP3.
#
# Every key is under a per-run prefix and is deleted at the end. Exit status 0 when every output
# matched; 1 with a diff (cat -A form: `$` ends a line, `^M` is a carriage return) on the first
# mismatch. The expectations were checked against redis-server 7.0 (Debian 12's package).
set -uo pipefail
export LC_ALL=C # ${#s} counts bytes, which RESP lengths are

if [ $# -ne 2 ]; then
    echo "usage: $0 HOST PORT" >&2
    exit 2
fi
HOST=$1
PORT=$2
P="cli$$.$RANDOM:" # key prefix, so that parallel runs do not collide
checks=0

cli() { redis-cli -h "$HOST" -p "$PORT" "$@"; }

# mismatch WHAT EXPECTED GOT: prints a diff and stops.
mismatch() {
    echo "resp_cli.sh: FAILED at: $1" >&2
    diff -u --label expected --label got <(printf '%s' "$2" | cat -A) <(printf '%s' "$3" | cat -A) >&2
    exit 1
}

# expect_cli EXPECTED ARGS...: redis-cli ARGS prints exactly EXPECTED on stdout.
expect_cli() {
    local want=$1 got
    shift
    got=$(cli "$@"; echo .)
    got=${got%.}
    [ "$got" == "$want" ] || mismatch "redis-cli $*" "$want" "$got"
    checks=$((checks + 1))
}

# expect_cli_line LINE ARGS...: one line of redis-cli ARGS's output is exactly LINE.
expect_cli_line() {
    local want=$1 got
    shift
    got=$(cli "$@")
    grep -qxF -- "$want" <<<"$got" || mismatch "redis-cli $* (a line '$want')" "$want" "$got"
    checks=$((checks + 1))
}

# bulks S...: sets BULKS to the RESP bulk strings of S..., concatenated. (A variable, not output:
# command substitution would drop the final "\n" of "\r\n".)
bulks() {
    BULKS=
    local s
    for s in "$@"; do printf -v BULKS '%s$%d\r\n%s\r\n' "$BULKS" "${#s}" "$s"; done
}

# requests WORD... [';' WORD...]...: sets REQUEST to these commands as RESP arrays, one after
# another (pipelined); a lone ';' separates commands.
requests() {
    REQUEST=
    local words=() word
    for word in "$@" ';'; do
        if [ "$word" == ';' ]; then
            [ ${#words[@]} -eq 0 ] && continue
            bulks "${words[@]}"
            printf -v REQUEST '%s*%d\r\n%s' "$REQUEST" ${#words[@]} "$BULKS"
            words=()
        else
            words+=("$word")
        fi
    done
}

# send_raw WHAT FD BYTES EXPECTED: sends BYTES (possibly none) on FD and reads exactly as many
# bytes as EXPECTED has (3 s at most), which must be EXPECTED.
send_raw() {
    local what=$1 fd=$2 request=$3 want=$4 got
    [ -z "$request" ] || printf '%s' "$request" >&"$fd"
    got=$(timeout 3 head -c "${#want}" <&"$fd"; echo .)
    got=${got%.}
    [ "$got" == "$want" ] || mismatch "raw $what" "$want" "$got"
    checks=$((checks + 1))
}

# exchange WHAT FD EXPECTED WORD... [';' WORD...]...: sends the commands as RESP arrays and
# checks the replies' bytes.
exchange() {
    local what=$1 fd=$2 want=$3
    shift 3
    requests "$@"
    send_raw "$what" "$fd" "$REQUEST" "$want"
}

# nothing_more WHAT FD: the server sent nothing beyond what was expected.
nothing_more() {
    local extra
    extra=$(timeout 0.3 head -c 200 <&"$1"; echo .)
    extra=${extra%.}
    [ -z "$extra" ] || mismatch "$2: nothing more on the connection" "" "$extra"
}

open() { eval "exec $1<>/dev/tcp/$HOST/$PORT" || { echo "resp_cli.sh: cannot connect to $HOST:$PORT" >&2; exit 1; }; }
close() { eval "exec $1<&-"; }

# Fail early and clearly when nothing listens.
if ! cli PING >/dev/null 2>&1; then
    echo "resp_cli.sh: no Redis-protocol endpoint at $HOST:$PORT" >&2
    exit 1
fi

# --- 1. raw output (stdout is not a terminal) --------------------------------------------------
expect_cli $'PONG\n' PING
expect_cli $'OK\n' SET "${P}room:1" "hello world"
expect_cli $'hello world\n' GET "${P}room:1"
expect_cli $'\n' GET "${P}missing"
expect_cli $'\n' SET "${P}room:1" other NX
expect_cli $'string\n' TYPE "${P}room:1"
expect_cli $'-1\n' TTL "${P}room:1"
expect_cli $'-2\n' TTL "${P}missing"
expect_cli $'2\n' HSET "${P}h" a 1 b 2
expect_cli $'a\n1\nb\n2\n' HGETALL "${P}h"
expect_cli $'1\n\n' HMGET "${P}h" a zz
expect_cli $'\n' HGET "${P}h" zz
expect_cli $'hash\n' TYPE "${P}h"
expect_cli $'none\n' TYPE "${P}missing"
expect_cli $'2\n' EXISTS "${P}room:1" "${P}h" "${P}missing"
expect_cli $'maxmemory\n' CONFIG GET maxmemory | head -1 # shape only: see the check below
got=$(cli CONFIG GET maxmemory)
[ "$(wc -l <<<"$got")" = 2 ] && [ "$(head -1 <<<"$got")" = maxmemory ] \
    || mismatch "CONFIG GET maxmemory: 2 lines, the first 'maxmemory'" $'maxmemory\n<value>\n' "$got"
checks=$((checks + 1))
expect_cli $'ERR unknown command \'FOO\', with args beginning with: \'bar\' \n\n' FOO bar
expect_cli $'ERR unknown command \'FOO\', with args beginning with: \n\n' FOO
expect_cli $'ERR wrong number of arguments for \'get\' command\n\n' GET
expect_cli $'ERR wrong number of arguments for \'hset\' command\n\n' HSET "${P}h" a
expect_cli $'WRONGTYPE Operation against a key holding the wrong kind of value\n\n' HGET "${P}room:1" a
expect_cli $'ERR value is not an integer or out of range\n\n' INCR "${P}room:1"
expect_cli $'NOSCRIPT No matching script. Please use EVAL.\n\n' \
    EVALSHA 0000000000000000000000000000000000000000 1 "${P}room:1"
# INFO is one bulk string whose lines end in CRLF; redis-cli prints it as is.
expect_cli_line $'role:master\r' INFO replication
expect_cli_line $'# Replication\r' INFO replication
expect_cli "${P}h"$'\n' --scan --pattern "${P}h*"

# --- 2. formatted output (--no-raw), as a terminal shows it --------------------------------------
expect_cli $'(nil)\n' --no-raw GET "${P}missing"
expect_cli $'"hello world"\n' --no-raw GET "${P}room:1"
expect_cli $'(integer) 2\n' --no-raw HLEN "${P}h"
expect_cli $'1) "a"\n2) "1"\n3) "b"\n4) "2"\n' --no-raw HGETALL "${P}h"
expect_cli $'1) "1"\n2) (nil)\n' --no-raw HMGET "${P}h" a zz
expect_cli $'(empty array)\n' --no-raw HGETALL "${P}missing"
expect_cli $'(error) ERR wrong number of arguments for \'get\' command\n' --no-raw GET

# --- 3. RESP3 --------------------------------------------------------------------------------------
# HELLO 3 on a RESP2 session switches it; redis-cli prints the map as "key value" lines.
expect_cli_line 'proto 3' HELLO 3
expect_cli_line 'role master' HELLO 3
expect_cli $'a 1\nb 2\n' -3 HGETALL "${P}h"
expect_cli $'1# "a" => "1"\n2# "b" => "2"\n' -3 --no-raw HGETALL "${P}h"
expect_cli $'(nil)\n' -3 --no-raw GET "${P}missing"
expect_cli $'1\n' SADD "${P}s" x
expect_cli $'1~ "x"\n' -3 --no-raw SMEMBERS "${P}s"
expect_cli $'(empty set)\n' -3 --no-raw SMEMBERS "${P}missing"
expect_cli_line '3# "proto" => (integer) 3' -3 --no-raw HELLO 3

# --- 4. commands piped on stdin: one connection, answered in order -------------------------------
piped=$(printf 'SET %sx 1\nINCR %sx\nINCRBY %sx 40\nGET %sx\nSET %sy "a b"\nGET %sy\nGET %smissing\nDEL %sx %sy\n' \
    "$P" "$P" "$P" "$P" "$P" "$P" "$P" "$P" "$P" | cli; echo .)
piped=${piped%.}
[ "$piped" == $'OK\n2\n42\n42\nOK\na b\n\n2\n' ] || mismatch "commands piped on stdin" $'OK\n2\n42\n42\nOK\na b\n\n2\n' "$piped"
checks=$((checks + 1))

# --- 5. raw protocol over /dev/tcp ----------------------------------------------------------------
K="${P}raw"
open 3
# Inline commands (what `printf 'PING\r\n' | nc` sends) and multibulk ones on one connection.
exchange "inline PING" 3 $'PING\r\n' $'+PONG\r\n'
exchange "inline ECHO" 3 $'ECHO hello\r\n' $'$5\r\nhello\r\n'
exchange "multibulk ECHO" 3 "$(command ECHO hi)" $'$2\r\nhi\r\n'
exchange "binary value" 3 "$(command SET "$K" $'a\xff\r\nb')$(command GET "$K")" \
    $'+OK\r\n$5\r\na\xff\r\nb\r\n'
exchange "null bulk" 3 "$(command GET "${P}missing")" $'$-1\r\n'
exchange "SET NX on a held key" 3 "$(command SET "$K" x EX 5 NX)" $'$-1\r\n'
exchange "HMGET with a null" 3 "$(command HMGET "${P}h" a zz)" $'*2\r\n$1\r\n1\r\n$-1\r\n'
exchange "empty array" 3 "$(command HGETALL "${P}missing")" $'*0\r\n'
exchange "unknown command" 3 $'FOO bar\r\n' $'-ERR unknown command \'FOO\', with args beginning with: \'bar\' \r\n'
exchange "wrong arity" 3 "$(command GET)" $'-ERR wrong number of arguments for \'get\' command\r\n'
exchange "WRONGTYPE" 3 "$(command HGET "$K" f)" $'-WRONGTYPE Operation against a key holding the wrong kind of value\r\n'
exchange "NOSCRIPT" 3 "$(command EVALSHA 0000000000000000000000000000000000000000 1 "$K")" \
    $'-NOSCRIPT No matching script. Please use EVAL.\r\n'
exchange "EXECABORT" 3 "$(command MULTI)$(command HSET "${P}tx" f)$(command EXEC)$(command EXISTS "${P}tx")" \
    $'+OK\r\n-ERR wrong number of arguments for \'hset\' command\r\n-EXECABORT Transaction discarded because of previous errors.\r\n:0\r\n'
exchange "MULTI/EXEC" 3 "$(command MULTI)$(command HSET "${P}tx" f v)$(command SADD "${P}txs" m)$(command EXEC)" \
    $'+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n:1\r\n:1\r\n'
exchange "EXEC without MULTI" 3 "$(command EXEC)" $'-ERR EXEC without MULTI\r\n'
nothing_more 3 "RESP2 connection"

# WATCH conflict: a write from another connection makes EXEC answer a null array (RESP2: *-1).
open 4
exchange "WATCH, read" 3 "$(command SET "$K" v0)$(command WATCH "$K")$(command GET "$K")" \
    $'+OK\r\n+OK\r\n$2\r\nv0\r\n'
exchange "conflicting write" 4 "$(command SET "$K" other)" $'+OK\r\n'
exchange "EXEC after the conflict" 3 "$(command MULTI)$(command SET "$K" mine)$(command EXEC)$(command GET "$K")" \
    $'+OK\r\n+QUEUED\r\n*-1\r\n$5\r\nother\r\n'
exchange "EXEC without a conflict" 3 "$(command WATCH "$K")$(command MULTI)$(command SET "$K" mine)$(command EXEC)" \
    $'+OK\r\n+OK\r\n+QUEUED\r\n*1\r\n+OK\r\n'

# Pub/sub frames in RESP2 (publisher on connection 4).
CH="${P}Svc|Method|topic|REQ"
exchange "SUBSCRIBE" 3 "$(command SUBSCRIBE "$CH")" "*3"$'\r\n'"$(bulk subscribe)$(bulk "$CH")"$':1\r\n'
exchange "PSUBSCRIBE" 3 "$(command PSUBSCRIBE "${P}Signal|*")" "*3"$'\r\n'"$(bulk psubscribe)$(bulk "${P}Signal|*")"$':2\r\n'
exchange "PUBLISH" 4 "$(command PUBLISH "$CH" hello)" $':1\r\n'
exchange "message" 3 "" "*3"$'\r\n'"$(bulk message)$(bulk "$CH")$(bulk hello)"
exchange "PUBLISH to a pattern" 4 "$(command PUBLISH "${P}Signal|R|n1|STR" s1)" $':1\r\n'
exchange "pmessage" 3 "" "*4"$'\r\n'"$(bulk pmessage)$(bulk "${P}Signal|*")$(bulk "${P}Signal|R|n1|STR")$(bulk s1)"
exchange "PING while subscribed" 3 "$(command PING)" $'*2\r\n$4\r\npong\r\n$0\r\n\r\n'
exchange "UNSUBSCRIBE" 3 "$(command UNSUBSCRIBE "$CH")" "*3"$'\r\n'"$(bulk unsubscribe)$(bulk "$CH")"$':1\r\n'
exchange "PUNSUBSCRIBE" 3 "$(command PUNSUBSCRIBE "${P}Signal|*")" "*3"$'\r\n'"$(bulk punsubscribe)$(bulk "${P}Signal|*")"$':0\r\n'
exchange "back to normal commands" 3 $'PING\r\n' $'+PONG\r\n'
nothing_more 3 "RESP2 pub/sub connection"
nothing_more 4 "publisher connection"
close 3

# The same shapes in RESP3 (HELLO 3's reply is a map; its contents vary by server).
open 3
printf '%s' "$(command HELLO 3)" >&3
hello=$(timeout 3 head -c 3 <&3)
[ "$hello" == "%7" ] || [ "${hello:0:1}" == "%" ] || mismatch "HELLO 3 answers a map" "%..." "$hello"
timeout 0.3 cat <&3 >/dev/null # the rest of the map
checks=$((checks + 1))
exchange "RESP3 null" 3 "$(command GET "${P}missing")" $'_\r\n'
exchange "RESP3 HMGET with a null" 3 "$(command HMGET "${P}h" a zz)" $'*2\r\n$1\r\n1\r\n_\r\n'
exchange "RESP3 map" 3 "$(command HGETALL "${P}h")" $'%2\r\n$1\r\na\r\n$1\r\n1\r\n$1\r\nb\r\n$1\r\n2\r\n'
exchange "RESP3 set" 3 "$(command SMEMBERS "${P}s")" $'~1\r\n$1\r\nx\r\n'
exchange "RESP3 empty set" 3 "$(command SMEMBERS "${P}missing")" $'~0\r\n'
exchange "RESP3 SET NX on a held key" 3 "$(command SET "$K" x NX)" $'_\r\n'
exchange "RESP3 WATCH, read" 3 "$(command SET "$K" v0)$(command WATCH "$K")$(command GET "$K")" \
    $'+OK\r\n+OK\r\n$2\r\nv0\r\n'
exchange "RESP3 conflicting write" 4 "$(command SET "$K" other)" $'+OK\r\n'
exchange "RESP3 EXEC after the conflict" 3 "$(command MULTI)$(command SET "$K" mine)$(command EXEC)" \
    $'+OK\r\n+QUEUED\r\n_\r\n'
exchange "RESP3 SUBSCRIBE" 3 "$(command SUBSCRIBE "$CH")" ">3"$'\r\n'"$(bulk subscribe)$(bulk "$CH")"$':1\r\n'
exchange "RESP3 PUBLISH" 4 "$(command PUBLISH "$CH" hello)" $':1\r\n'
exchange "RESP3 message" 3 "" ">3"$'\r\n'"$(bulk message)$(bulk "$CH")$(bulk hello)"
# In RESP3 a subscribed connection takes any command; PING answers as usual.
exchange "RESP3 PING while subscribed" 3 "$(command PING)" $'+PONG\r\n'
exchange "RESP3 GET while subscribed" 3 "$(command GET "$K")" $'$5\r\nother\r\n'
exchange "RESP3 UNSUBSCRIBE" 3 "$(command UNSUBSCRIBE "$CH")" ">3"$'\r\n'"$(bulk unsubscribe)$(bulk "$CH")"$':0\r\n'
nothing_more 3 "RESP3 connection"
close 3
close 4

expect_cli $'6\n' DEL "${P}room:1" "${P}h" "${P}s" "$K" "${P}tx" "${P}txs"
echo "resp_cli.sh: $checks checks passed against $HOST:$PORT"
echo "$checks passed, 0 failed"
