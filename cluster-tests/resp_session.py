"""A LiveKit-like session over redis-py against Redis-protocol endpoints.

    resp_session.py --nodes HOST:PORT,HOST:PORT,... [--protocol 2|3] [--rounds N]
                    [--duration SECONDS] [--prefix P]

The first endpoint is "this media host's local node"; the others are other hosts' nodes. Every
step checks what a Redis user relies on (reply shapes, nil replies, WATCH conflicts, exactly one
SET NX winner, expiry, pub/sub across endpoints). It runs against a real redis-server too (give
the same endpoint several times), which is how its expectations were checked.

Exit status 0 and a final JSON line of counters on success; on a failed expectation, the step
and what was expected go to stderr and the exit status is 1.
"""

import argparse
import json
import sys
import threading
import time
import uuid

import redis

LOCK_RELEASE = (
    'if redis.call("get", KEYS[1]) == ARGV[1] then\n'
    '\treturn redis.call("del", KEYS[1])\n'
    "else\n"
    "\treturn 0\n"
    "end"
)

counters = {"rounds": 0, "steps": 0, "watch_conflicts": 0, "nx_races": 0, "messages": 0}


class Failed(Exception):
    pass


def expect(what, got, want):
    if got != want:
        raise Failed(f"{what}: got {got!r}, want {want!r}")


def eventually(what, read, want, within=3.0):
    """Reads until `want` appears: another node applies a write shortly after it is acked."""
    deadline = time.time() + within
    while True:
        got = read()
        if got == want:
            return
        if time.time() > deadline:
            raise Failed(f"{what}: got {got!r}, want {want!r} within {within}s")
        time.sleep(0.02)


class Session:
    def __init__(self, endpoints, protocol, prefix):
        self.endpoints = endpoints
        self.protocol = protocol
        self.prefix = prefix
        self.clients = [self.connect(e) for e in endpoints]
        self.local = self.clients[0]
        self.other = self.clients[1 % len(self.clients)]
        self.last = self.clients[-1]

    def connect(self, endpoint):
        host, port = endpoint.rsplit(":", 1)
        return redis.Redis(host=host, port=int(port), protocol=self.protocol,
                           socket_timeout=10, decode_responses=False)

    def k(self, name):
        return f"{self.prefix}{name}"

    def node_registry(self):
        nodes = self.k("nodes")
        for i, client in enumerate(self.clients):
            expect("HSET nodes", client.hset(nodes, f"node{i}", b"\x08\x01\x12\x00\xff" + bytes([i])), 1)
        for i, client in enumerate(self.clients):
            expect("own HGET", client.hget(nodes, f"node{i}"), b"\x08\x01\x12\x00\xff" + bytes([i]))
        eventually("HVALS from another node", lambda: len(self.other.hvals(nodes)), len(self.clients))
        expect("HDEL", self.local.hdel(nodes, "node0"), 1)
        expect("HGET deleted", self.local.hget(nodes, "node0"), None)
        self.local.delete(nodes)

    def room_lock(self):
        lock = self.k("room_lock:standup")
        expect("lock SET NX EX", self.local.set(lock, "LOCK_a", ex=5, nx=True), True)
        expect("second SET NX", self.other.set(lock, "LOCK_b", ex=5, nx=True), None)
        release = self.local.register_script(LOCK_RELEASE)  # EVALSHA, falling back to EVAL
        expect("release with another token", release(keys=[lock], args=["LOCK_b"]), 0)
        expect("lock still held", self.local.get(lock), b"LOCK_a")
        expect("release with the token", release(keys=[lock], args=["LOCK_a"]), 1)
        expect("lock gone", self.local.exists(lock), 0)
        sha = self.local.script_load(LOCK_RELEASE)
        expect("SCRIPT EXISTS", self.local.script_exists(sha), [True])
        try:
            self.local.evalsha("0" * 40, 1, lock, "x")
            raise Failed("EVALSHA of an unknown script must fail")
        except redis.exceptions.NoScriptError:
            pass

    def room_stores(self):
        rooms, internal = self.k("rooms"), self.k("room_internal")
        pipe = self.local.pipeline(transaction=False)
        pipe.hset(rooms, "standup", b"\x0a\x07standup\x00")
        pipe.hset(internal, "standup", b"\x01\x02")
        expect("pipelined room store", pipe.execute(), [1, 1])
        expect("HMGET", self.local.hmget(rooms, ["standup", "missing"]), [b"\x0a\x07standup\x00", None])
        expect("HGET missing", self.local.hget(rooms, "missing"), None)
        self.local.delete(rooms, internal)

    def participants(self):
        key = self.k("room_participants:standup")
        for name in ["alice", "bob", "agent"]:
            expect("HSET participant", self.local.hset(key, name, f"info-{name}".encode()), 1)
        expect("HVALS", sorted(self.local.hvals(key)), [b"info-agent", b"info-alice", b"info-bob"])
        expect("HLEN", self.local.hlen(key), 3)
        expect("HDEL", self.local.hdel(key, "bob"), 1)
        expect("HGETALL", self.local.hgetall(key), {b"agent": b"info-agent", b"alice": b"info-alice"})
        expect("DEL", self.local.delete(key), 1)
        expect("HGETALL of nothing", self.local.hgetall(key), {})

    def egress(self):
        egress, by_room = self.k("egress"), self.k("egress:room:standup")
        tx = self.local.pipeline(transaction=True)
        tx.hset(egress, "EG_1", b"info")
        tx.sadd(by_room, "EG_1", "EG_2")
        tx.hget(egress, "EG_1")
        expect("MULTI pipeline", tx.execute(), [1, 2, b"info"])
        expect("SMEMBERS", self.local.smembers(by_room), {b"EG_1", b"EG_2"})
        expect("SISMEMBER", self.local.sismember(by_room, "EG_2"), True)
        expect("SREM", self.local.srem(by_room, "EG_2"), 1)
        expect("SCARD", self.local.scard(by_room), 1)
        self.local.delete(egress, by_room)

    def watch_multi_exec(self):
        ingress, stream_key, room = self.k("ingress"), self.k("stream_key"), self.k("room_ingress:r")
        self.local.hset(ingress, "IN_1", b"v0")
        with self.local.pipeline() as pipe:
            pipe.watch(ingress, stream_key)
            expect("read under WATCH", pipe.hget(ingress, "IN_1"), b"v0")
            # A writer on another node changes the watched hash.
            self.other.hset(ingress, "IN_1", b"conflict")
            pipe.multi()
            pipe.hset(ingress, "IN_1", b"mine")
            pipe.hset(stream_key, "sk", "IN_1")
            pipe.sadd(room, "IN_1")
            try:
                pipe.execute()
                raise Failed("EXEC must abort after a conflicting write on another node")
            except redis.WatchError:
                counters["watch_conflicts"] += 1
        expect("aborted EXEC applied nothing", self.local.exists(stream_key, room), 0)
        expect("the conflicting write stands", self.local.hget(ingress, "IN_1"), b"conflict")
        for attempt in range(5):  # LiveKit retries up to 5 times
            try:
                with self.local.pipeline() as pipe:
                    pipe.watch(ingress, stream_key)
                    pipe.hget(ingress, "IN_1")
                    pipe.multi()
                    pipe.hset(ingress, "IN_1", b"mine")
                    pipe.hset(stream_key, "sk", "IN_1")
                    pipe.sadd(room, "IN_1")
                    expect("EXEC", pipe.execute(), [0, 1, 1])
                break
            except redis.WatchError:
                if attempt == 4:
                    raise Failed("EXEC kept aborting without a conflict")
        expect("committed", self.other.hget(ingress, "IN_1") in (b"mine", b"conflict"), True)
        eventually("EXEC visible on another node", lambda: self.other.hget(ingress, "IN_1"), b"mine")
        self.local.delete(ingress, stream_key, room)

    def nx_races(self):
        for race in range(10):
            key = self.k(f"dedup:{uuid.uuid4().hex}")
            barrier = threading.Barrier(8)
            results = [None] * 8

            def racer(i):
                client = self.connect(self.endpoints[i % len(self.endpoints)])
                barrier.wait()
                results[i] = client.set(key, f"racer{i}", ex=5, nx=True)
                client.close()

            threads = [threading.Thread(target=racer, args=(i,)) for i in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            winners = [i for i, r in enumerate(results) if r is True]
            expect(f"SET NX winners in race {race} ({results})", len(winners), 1)
            expect("losers get nil", sorted(set(map(repr, results))), sorted({"True", "None"}))
            eventually("the winner's value", lambda: self.local.get(key), f"racer{winners[0]}".encode())
            counters["nx_races"] += 1

    def expiry(self):
        key = self.k("expiring")
        expect("SET PX", self.local.set(key, "v", px=300), True)
        pttl = self.local.pttl(key)
        if not 0 < pttl <= 300:
            raise Failed(f"PTTL {pttl} not in (0, 300]")
        expect("TTL", self.local.ttl(key) in (0, 1), True)
        time.sleep(0.6)
        expect("expired GET", self.local.get(key), None)
        expect("expired EXISTS", self.local.exists(key), 0)
        expect("expired TTL", self.local.ttl(key), -2)
        self.local.set(key, "v")
        expect("EXPIRE", self.local.expire(key, 100), True)
        ttl = self.local.ttl(key)
        if not 0 < ttl <= 100:
            raise Failed(f"TTL {ttl} not in (0, 100]")
        expect("PERSIST", self.local.persist(key), True)
        expect("TTL after PERSIST", self.local.ttl(key), -1)
        self.local.delete(key)

    def strings(self):
        c, s = self.k("counter"), self.k("string")
        expect("INCR", self.local.incr(c), 1)
        expect("INCRBY", self.local.incrby(c, 10), 11)
        expect("DECR", self.local.decr(c), 10)
        expect("DECRBY", self.local.decrby(c, 4), 6)
        self.local.set(s, "abc")
        try:
            self.local.incr(s)
            raise Failed("INCR of a non-integer must fail")
        except redis.ResponseError as e:
            expect("INCR error", "not an integer" in str(e), True)
        expect("APPEND", self.local.append(s, "\x00d"), 5)
        expect("STRLEN", self.local.strlen(s), 5)
        expect("MSET", self.local.mset({self.k("m1"): "a", self.k("m2"): "b"}), True)
        expect("MGET", self.local.mget([self.k("m1"), self.k("none"), self.k("m2")]), [b"a", None, b"b"])
        expect("SETNX taken", self.local.setnx(self.k("m1"), "x"), False)
        expect("SET GET", self.local.set(self.k("m1"), "new", get=True), b"a")
        expect("TYPE string", self.local.type(s), b"string")
        self.local.hset(self.k("h"), "f", "v")
        expect("TYPE hash", self.local.type(self.k("h")), b"hash")
        expect("TYPE none", self.local.type(self.k("none")), b"none")
        try:
            self.local.hget(s, "f")
            raise Failed("HGET on a string must fail")
        except redis.ResponseError as e:
            expect("WRONGTYPE", str(e).startswith("WRONGTYPE"), True)
        self.local.delete(c, s, self.k("m1"), self.k("m2"), self.k("h"))

    def keys(self):
        names = [self.k(f"scan:{i}") for i in range(57)]
        for name in names:
            self.local.set(name, "x")
        found = set(self.local.scan_iter(match=self.k("scan:*"), count=10))
        expect("SCAN", found, {n.encode() for n in names})
        expect("KEYS", set(self.local.keys(self.k("scan:*"))), {n.encode() for n in names})
        expect("DBSIZE", self.local.dbsize() >= len(names), True)
        expect("UNLINK", self.local.unlink(*names), len(names))

    def pubsub(self):
        subscriber = self.last.pubsub()
        channels = [f"{self.prefix}Svc|Method|topic{i}|REQ" for i in range(2000)]
        subscriber.subscribe(*channels)
        subscriber.psubscribe(f"{self.prefix}Signal|*")
        confirmed = 0
        deadline = time.time() + 10
        while confirmed < len(channels) + 1 and time.time() < deadline:
            message = subscriber.get_message(timeout=1)
            if message and message["type"] in ("subscribe", "psubscribe"):
                confirmed += 1
        expect("subscription confirmations", confirmed, len(channels) + 1)
        pipe = self.local.pipeline(transaction=False)
        sent = []
        for i in range(200):
            channel = channels[(i * 7) % len(channels)]
            pipe.publish(channel, f"{i}")
            sent.append((channel.encode(), f"{i}".encode()))
        for j in range(50):
            channel = f"{self.prefix}Signal|RelaySignal|node{j % 3}|STR"
            pipe.publish(channel, f"s{j}")
            sent.append((channel.encode(), f"s{j}".encode()))
        pipe.execute()
        got = []
        deadline = time.time() + 5
        while len(got) < len(sent) and time.time() < deadline:
            message = subscriber.get_message(timeout=0.5)
            if message and message["type"] in ("message", "pmessage"):
                got.append((message["channel"], message["data"]))
        expect("every message exactly once, in publish order", got, sent)
        counters["messages"] += len(got)
        numsub = dict(self.last.pubsub_numsub(channels[7]))
        expect("PUBSUB NUMSUB", numsub, {channels[7].encode(): 1})
        listed = self.last.pubsub_channels(f"{self.prefix}Svc|Method|topic1*")
        expect("PUBSUB CHANNELS", channels[1].encode() in listed, True)
        subscriber.ping()
        deadline = time.time() + 5
        while time.time() < deadline:
            message = subscriber.get_message(timeout=0.5)
            if message and message["type"] == "pong":
                break
        else:
            raise Failed("no PONG while subscribed")
        subscriber.unsubscribe()
        subscriber.punsubscribe()
        subscriber.close()


STEPS = ["node_registry", "room_lock", "room_stores", "participants", "egress",
         "watch_multi_exec", "nx_races", "expiry", "strings", "keys", "pubsub"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", required=True)
    parser.add_argument("--protocol", type=int, choices=[2, 3], default=2)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--duration", type=float, default=0, help="run rounds for this long")
    parser.add_argument("--prefix", default=f"t{uuid.uuid4().hex[:8]}:")
    parser.add_argument("--steps", default=",".join(STEPS))
    args = parser.parse_args()
    session = Session(args.nodes.split(","), args.protocol, args.prefix)
    steps = args.steps.split(",")
    started = time.time()
    round_ = 0
    while round_ < args.rounds or time.time() - started < args.duration:
        for step in steps:
            try:
                getattr(session, step)()
            except Failed as failure:
                print(f"round {round_} step {step}: {failure}", file=sys.stderr)
                sys.exit(1)
            counters["steps"] += 1
        round_ += 1
        counters["rounds"] = round_
    print(json.dumps(counters))


if __name__ == "__main__":
    main()
