package main

import (
	"bufio"
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/modelcast/modelcast/pkg/coord"
	"github.com/modelcast/modelcast/test/redistest"
)

// waitTimeout bounds every wait on the redisd process.
const waitTimeout = 10 * time.Second

// TestRedisd builds the command, runs it as a process, and checks with
// go-redis that it serves every command modelcast's chain coordination uses,
// directly and from Lua scripts, with and without authentication, and that
// it stops on SIGTERM and SIGINT.
func TestRedisd(t *testing.T) {
	bin := build(t)

	t.Run("commands", func(t *testing.T) {
		p := startRedisd(t, bin)
		suite(t, newClient(t, p.addr, "", ""))
		p.signal(t, syscall.SIGTERM)
	})

	t.Run("auth", func(t *testing.T) {
		p := startRedisd(t, bin, "--username", "modelcast", "--password", "s3cret")
		for _, tc := range []struct {
			name, user, pass string
			ok               bool
		}{
			{"right password", "modelcast", "s3cret", true},
			{"wrong password", "modelcast", "nope", false},
			{"no credentials", "", "", false},
		} {
			t.Run(tc.name, func(t *testing.T) {
				c := newClient(t, p.addr, tc.user, tc.pass)
				err := c.Ping(t.Context()).Err()
				if tc.ok && err != nil {
					t.Fatalf("PING: %v", err)
				}
				if !tc.ok && !redis.IsAuthError(err) {
					t.Fatalf("PING error = %v, want an auth error", err)
				}
				if tc.ok {
					if got, err := redis.NewScript(`return redis.call('INCR', KEYS[1])`).Run(t.Context(), c, []string{"n"}).Int(); err != nil || got != 1 {
						t.Errorf("script after AUTH = %d, %v; want 1", got, err)
					}
				}
			})
		}
		p.signal(t, syscall.SIGINT)
	})

	t.Run("password only", func(t *testing.T) {
		p := startRedisd(t, bin, "--password", "s3cret")
		if err := newClient(t, p.addr, "", "s3cret").Ping(t.Context()).Err(); err != nil {
			t.Errorf("PING with the password: %v", err)
		}
		if err := newClient(t, p.addr, "", "").Ping(t.Context()).Err(); !redis.IsAuthError(err) {
			t.Errorf("PING without password: error %v, want an auth error", err)
		}
		p.signal(t, syscall.SIGTERM)
	})

	t.Run("invalid flags", func(t *testing.T) {
		for _, args := range [][]string{
			{"--username", "u"},
			{"--listen", ""},
			{"--no-such-flag"},
		} {
			err := exec.CommandContext(t.Context(), bin, args...).Run()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 2 {
				t.Errorf("redisd %q: %v, want exit status 2", args, err)
			}
		}
	})

	t.Run("listen error", func(t *testing.T) {
		p := startRedisd(t, bin)
		cmd := exec.CommandContext(t.Context(), bin, "--listen", p.addr)
		out, err := cmd.CombinedOutput()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 1 || !bytes.Contains(out, []byte("listen on "+p.addr)) {
			t.Errorf("second redisd on %s: %v, want exit status 1 and a listen error; output:\n%s", p.addr, err, out)
		}
	})
}

// TestRealRedis runs the same checks against a real redis-server, so the
// expectations in suite are Redis's behaviour and not miniredis's.
func TestRealRedis(t *testing.T) {
	s := redistest.Start(t, redistest.Options{})
	suite(t, newClient(t, s.Addr(), "", ""))
}

// build compiles the command into a temporary directory.
func build(t *testing.T) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go tool to build the binary")
	}
	bin := filepath.Join(t.TempDir(), "redisd")
	if out, err := exec.CommandContext(t.Context(), goTool, "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// redisd is a running redisd process.
type redisd struct {
	cmd    *exec.Cmd
	addr   string
	stderr *bytes.Buffer // klog's output; read only after done
	done   chan error    // receives cmd.Wait's result
	waited bool          // the test has received from done
}

// startRedisd runs bin with args plus --addr-file and waits for its ready
// line, which must agree with the address file. t.Cleanup kills it.
func startRedisd(t *testing.T, bin string, args ...string) *redisd {
	t.Helper()
	addrFile := filepath.Join(t.TempDir(), "addr")
	cmd := exec.Command(bin, append(args, "--addr-file", addrFile)...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &redisd{cmd: cmd, stderr: new(bytes.Buffer), done: make(chan error, 1)}
	cmd.Stderr = p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			default: // only the first line matters; the pipe is drained
			}
		}
		p.done <- cmd.Wait()
	}()
	t.Cleanup(func() {
		if !p.waited {
			_ = cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("redisd stderr:\n%s", p.stderr)
		}
	})

	var line string
	select {
	case line = <-lines:
	case err := <-p.done:
		p.waited = true
		t.Fatalf("redisd exited before its ready line: %v\n%s", err, p.stderr)
	case <-time.After(waitTimeout):
		t.Fatalf("no ready line from redisd within %v", waitTimeout)
	}
	addr, ok := strings.CutPrefix(line, "redisd: serving ")
	addr, ok2 := strings.CutSuffix(addr, " (miniredis)")
	if !ok || !ok2 || !strings.HasPrefix(addr, "127.0.0.1:") {
		t.Fatalf("ready line %q, want \"redisd: serving 127.0.0.1:PORT (miniredis)\"", line)
	}
	p.addr = addr
	if b, err := os.ReadFile(addrFile); err != nil || string(b) != addr+"\n" {
		t.Fatalf("address file = %q, %v; want %q", b, err, addr+"\n")
	}
	return p
}

// signal sends sig and expects a clean exit.
func (p *redisd) signal(t *testing.T, sig os.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.done:
		p.waited = true
		if err != nil {
			t.Errorf("redisd after %v: %v, want exit status 0", sig, err)
		}
	case <-time.After(waitTimeout):
		t.Fatalf("redisd still running %v after %v", waitTimeout, sig)
	}
}

func newClient(t *testing.T, addr, user, pass string) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{
		Addr:         addr,
		Username:     user,
		Password:     pass,
		DialTimeout:  2 * time.Second,
		ReadTimeout:  2 * time.Second,
		WriteTimeout: 2 * time.Second,
		MaxRetries:   -1,
	})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// suite checks the commands modelcast uses, directly and from Lua.
func suite(t *testing.T, c *redis.Client) {
	t.Run("direct", func(t *testing.T) { direct(t, c) })
	t.Run("lua", func(t *testing.T) { lua(t, c) })
	t.Run("evalsha", func(t *testing.T) { evalsha(t, c) })
	t.Run("chain join", func(t *testing.T) { chainJoin(t, c) })
	t.Run("coordinator", func(t *testing.T) { coordinator(t, c) })
	t.Run("expiry", func(t *testing.T) { expiry(t, c) })
}

// check fails the test when err is set or got differs from want.
func check[T any](t *testing.T, what string, got T, err error, want T) {
	t.Helper()
	if err != nil {
		t.Errorf("%s: %v", what, err)
		return
	}
	if !equal(got, want) {
		t.Errorf("%s = %#v, want %#v", what, got, want)
	}
}

// equal is reflect.DeepEqual, except that empty slices and maps equal nil
// ones.
func equal(a, b any) bool {
	if reflect.DeepEqual(a, b) {
		return true
	}
	va, vb := reflect.ValueOf(a), reflect.ValueOf(b)
	switch va.Kind() {
	case reflect.Slice, reflect.Map:
		return va.Kind() == vb.Kind() && va.Len() == 0 && vb.Len() == 0
	}
	return false
}

// direct sends each command through go-redis's typed API.
func direct(t *testing.T, c *redis.Client) {
	ctx := t.Context()
	k := func(s string) string { return "direct:" + s }

	v, err := c.Ping(ctx).Result()
	check(t, "PING", v, err, "PONG")

	// SET NX PX, SET NX EX, GET.
	v, err = c.SetArgs(ctx, k("s"), "a", redis.SetArgs{Mode: "NX", TTL: 61500 * time.Millisecond}).Result()
	check(t, "SET NX PX", v, err, "OK")
	err = c.SetArgs(ctx, k("s"), "b", redis.SetArgs{Mode: "NX", TTL: time.Minute}).Err()
	check(t, "SET NX EX on an existing key: redis.Nil", errors.Is(err, redis.Nil), nil, true)
	v, err = c.SetArgs(ctx, k("s2"), "c", redis.SetArgs{Mode: "NX", TTL: time.Minute}).Result()
	check(t, "SET NX EX", v, err, "OK")
	ok, err := c.SetNX(ctx, k("s2"), "d", time.Second).Result()
	check(t, "SETNX-style SET on an existing key", ok, err, false)
	v, err = c.Get(ctx, k("s")).Result()
	check(t, "GET", v, err, "a")
	err = c.Get(ctx, k("missing")).Err()
	check(t, "GET missing: redis.Nil", errors.Is(err, redis.Nil), nil, true)
	pttl, err := c.PTTL(ctx, k("s")).Result()
	check(t, "PTTL after SET PX in (60s, 61.5s]", pttl > time.Minute && pttl <= 61500*time.Millisecond, err, true)
	ttl, err := c.TTL(ctx, k("s2")).Result()
	check(t, "TTL after SET EX in (50s, 60s]", ttl > 50*time.Second && ttl <= time.Minute, err, true)

	// INCR.
	n, err := c.Incr(ctx, k("n")).Result()
	check(t, "INCR", n, err, 1)
	n, err = c.Incr(ctx, k("n")).Result()
	check(t, "INCR again", n, err, 2)

	// Sorted sets.
	n, err = c.ZAdd(ctx, k("z"), redis.Z{Score: 1, Member: "n1"}, redis.Z{Score: 2, Member: "n2"}, redis.Z{Score: 3, Member: "n3"}).Result()
	check(t, "ZADD", n, err, 3)
	n, err = c.ZAdd(ctx, k("z"), redis.Z{Score: 2, Member: "n2"}).Result()
	check(t, "ZADD of a member present", n, err, 0)
	f, err := c.ZScore(ctx, k("z"), "n2").Result()
	check(t, "ZSCORE", f, err, 2)
	err = c.ZScore(ctx, k("z"), "nope").Err()
	check(t, "ZSCORE missing: redis.Nil", errors.Is(err, redis.Nil), nil, true)
	zs, err := c.ZRangeWithScores(ctx, k("z"), 0, -1).Result()
	check(t, "ZRANGE WITHSCORES", zs, err, []redis.Z{{Score: 1, Member: "n1"}, {Score: 2, Member: "n2"}, {Score: 3, Member: "n3"}})
	n, err = c.ZRem(ctx, k("z"), "n1", "nope").Result()
	check(t, "ZREM", n, err, 1)
	ss, err := c.ZRange(ctx, k("z"), 0, -1).Result()
	check(t, "ZRANGE after ZREM", ss, err, []string{"n2", "n3"})

	// Hashes.
	n, err = c.HSet(ctx, k("h"), "f1", "v1", "f2", "v2").Result()
	check(t, "HSET", n, err, 2)
	m, err := c.HGetAll(ctx, k("h")).Result()
	check(t, "HGETALL", m, err, map[string]string{"f1": "v1", "f2": "v2"})
	n, err = c.HDel(ctx, k("h"), "f1", "nope").Result()
	check(t, "HDEL", n, err, 1)
	m, err = c.HGetAll(ctx, k("h")).Result()
	check(t, "HGETALL after HDEL", m, err, map[string]string{"f2": "v2"})
	m, err = c.HGetAll(ctx, k("missing")).Result()
	check(t, "HGETALL missing", m, err, map[string]string{})

	// Expiry.
	ok, err = c.PExpire(ctx, k("h"), 90*time.Second).Result()
	check(t, "PEXPIRE", ok, err, true)
	pttl, err = c.PTTL(ctx, k("h")).Result()
	check(t, "PTTL after PEXPIRE in (80s, 90s]", pttl > 80*time.Second && pttl <= 90*time.Second, err, true)
	ok, err = c.Expire(ctx, k("n"), time.Minute).Result()
	check(t, "EXPIRE", ok, err, true)
	ok, err = c.PExpire(ctx, k("missing"), time.Minute).Result()
	check(t, "PEXPIRE missing", ok, err, false)

	// MGET.
	vs, err := c.MGet(ctx, k("s"), k("missing"), k("s2")).Result()
	check(t, "MGET", vs, err, []any{"a", nil, "c"})

	// SETRANGE, GETRANGE.
	n, err = c.SetRange(ctx, k("r"), 0, "hello").Result()
	check(t, "SETRANGE", n, err, 5)
	n, err = c.SetRange(ctx, k("r"), 6, "world").Result()
	check(t, "SETRANGE past the end", n, err, 11)
	v, err = c.GetRange(ctx, k("r"), 6, 10).Result()
	check(t, "GETRANGE", v, err, "world")
	v, err = c.GetRange(ctx, k("r"), 0, -1).Result()
	check(t, "GETRANGE whole (zero-filled gap)", v, err, "hello\x00world")
	v, err = c.GetRange(ctx, k("missing"), 0, 10).Result()
	check(t, "GETRANGE missing", v, err, "")

	// EXISTS, DEL.
	n, err = c.Exists(ctx, k("s"), k("missing"), k("s2")).Result()
	check(t, "EXISTS", n, err, 2)
	n, err = c.Del(ctx, k("s"), k("s2"), k("missing")).Result()
	check(t, "DEL", n, err, 2)
	n, err = c.Exists(ctx, k("s"), k("s2")).Result()
	check(t, "EXISTS after DEL", n, err, 0)
}

// luaAll calls every command from Lua and returns what it saw as strings.
const luaAll = `
local out = {}
local function add(v) out[#out + 1] = v end
add(redis.call('PING')['ok'])
add(redis.call('SET', KEYS[1], 'a', 'NX', 'PX', ARGV[1])['ok'])
add(tostring(redis.call('SET', KEYS[1], 'b', 'NX', 'EX', 60)))
add(redis.call('SET', KEYS[7], 'c', 'NX', 'EX', 60)['ok'])
add(redis.call('GET', KEYS[1]))
add(tostring(redis.call('GET', KEYS[5])))
add(tostring(redis.call('INCR', KEYS[2])))
local n = redis.call('INCR', KEYS[2])
add('n=' .. n .. ',n+10=' .. (n + 10))
add(tostring(redis.call('ZADD', KEYS[3], 1, 'n1', 2, 'n2', 3, 'n3')))
local s = redis.call('ZSCORE', KEYS[3], 'n2')
add(s .. '+1=' .. (tonumber(s) + 1))
add(tostring(redis.call('ZSCORE', KEYS[3], 'nope')))
add(table.concat(redis.call('ZRANGE', KEYS[3], 0, -1, 'WITHSCORES'), ','))
add(tostring(redis.call('ZREM', KEYS[3], 'n1')))
add(table.concat(redis.call('ZRANGE', KEYS[3], 0, -1), ','))
add(tostring(redis.call('HSET', KEYS[4], 'f1', 'v1', 'f2', 'v2')))
local h = redis.call('HGETALL', KEYS[4])
local fields = {}
for i = 1, #h, 2 do fields[#fields + 1] = h[i] .. '=' .. h[i + 1] end
table.sort(fields)
add(table.concat(fields, ','))
add(tostring(redis.call('HDEL', KEYS[4], 'f1')))
add(tostring(#redis.call('HGETALL', KEYS[5])))
add(tostring(redis.call('PEXPIRE', KEYS[4], 90000)))
add(tostring(redis.call('EXPIRE', KEYS[2], 60)))
add(tostring(redis.call('PEXPIRE', KEYS[5], 90000)))
local pttl = redis.call('PTTL', KEYS[4])
add(tostring(pttl > 80000 and pttl <= 90000))
local mg = redis.call('MGET', KEYS[1], KEYS[5], KEYS[7])
add(tostring(mg[1]) .. '|' .. tostring(mg[2]) .. '|' .. tostring(mg[3]))
add(tostring(redis.call('SETRANGE', KEYS[6], 0, 'hello')))
add(tostring(redis.call('SETRANGE', KEYS[6], 6, 'world')))
add(redis.call('GETRANGE', KEYS[6], 6, 10))
add(tostring(string.len(redis.call('GETRANGE', KEYS[6], 0, -1))))
add(tostring(redis.call('EXISTS', KEYS[1], KEYS[5], KEYS[7])))
add(tostring(redis.call('DEL', KEYS[1], KEYS[7], KEYS[5])))
add(tostring(redis.call('EXISTS', KEYS[1])))
return out
`

// luaWant is what luaAll returns.
func luaWant() []any {
	return []any{
		"PONG",
		"OK",
		"false",
		"OK",
		"a",
		"false",
		"1",
		"n=2,n+10=12",
		"3",
		"2+1=3",
		"false",
		"n1,1,n2,2,n3,3",
		"1",
		"n2,n3",
		"2",
		"f1=v1,f2=v2",
		"1",
		"0",
		"1",
		"1",
		"0",
		"true",
		"a|false|c",
		"5",
		"11",
		"world",
		"11",
		"2",
		"2",
		"0",
	}
}

func luaKeys(prefix string) []string {
	var keys []string
	for _, k := range []string{"s", "n", "z", "h", "missing", "r", "s2"} {
		keys = append(keys, prefix+k)
	}
	return keys
}

// lua runs luaAll through redis.NewScript's Run (EVALSHA, then EVAL on
// NOSCRIPT).
func lua(t *testing.T, c *redis.Client) {
	got, err := redis.NewScript(luaAll).Run(t.Context(), c, luaKeys("lua:"), 61500).Slice()
	check(t, "script", got, err, luaWant())
}

// evalsha loads the script (SCRIPT LOAD) and runs it by digest only.
func evalsha(t *testing.T, c *redis.Client) {
	ctx := t.Context()
	script := redis.NewScript(luaAll + "-- evalsha\n")
	err := script.EvalSha(ctx, c, luaKeys("evalsha:"), 61500).Err()
	check(t, "EVALSHA before SCRIPT LOAD: NOSCRIPT", redis.HasErrorPrefix(err, "NOSCRIPT"), nil, true)
	sha, err := script.Load(ctx, c).Result()
	check(t, "SCRIPT LOAD digest", sha, err, script.Hash())
	exists, err := script.Exists(ctx, c).Result()
	check(t, "SCRIPT EXISTS", exists, err, []bool{true})
	got, err := script.EvalSha(ctx, c, luaKeys("evalsha:"), 61500).Slice()
	check(t, "EVALSHA", got, err, luaWant())
	// The counter the script left behind, through another script.
	n, err := redis.NewScript(`return redis.call('INCR', KEYS[1]) + tonumber(ARGV[1])`).Run(ctx, c, []string{"evalsha:n"}, "40").Int()
	check(t, "INCR + tonumber(ARGV)", n, err, 43)
}

// joinScript is a chain join in the style of pkg/coord's: idempotent, returns the
// predecessor.
const joinScript = `
local pos = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not pos then
  pos = redis.call('INCR', KEYS[2]); redis.call('ZADD', KEYS[1], pos, ARGV[1])
end
redis.call('PEXPIRE', KEYS[1], ARGV[2]); redis.call('PEXPIRE', KEYS[2], ARGV[2])
return redis.call('ZREVRANGEBYSCORE', KEYS[1], '(' .. pos, '-inf', 'LIMIT', 0, 1)`

// coordinator runs pkg/coord's own Coordinator (its Lua scripts included) against the server:
// the demo's embedded Redis must run what the nodes run.
func coordinator(t *testing.T, c *redis.Client) {
	ctx := t.Context()
	co := coord.NewCoordinator(c)
	info := coord.ModelInfo{URI: "oss://b/m/", Size: 1, Files: 1}
	join := func(node string, prefer int) int {
		t.Helper()
		pos, err := co.Join(ctx, "demo", "k", node, info, coord.NodeProgress{Bytes: 1}, prefer)
		if err != nil {
			t.Fatalf("join %s: %v", node, err)
		}
		return pos
	}
	for i, n := range []string{"a", "b", "c"} {
		check(t, "join "+n, join(n, 0), nil, i+1)
	}
	check(t, "flush", c.FlushAll(ctx).Err(), nil, error(nil))
	check(t, "rejoin c at its position", join("c", 3), nil, 3)
	check(t, "a newcomer after every node present", join("d", 0), nil, 4)
	check(t, "rejoin a at its position", join("a", 1), nil, 1)
	pos, err := co.MoveToTail(ctx, "demo", "k", "a")
	check(t, "move a to the tail", pos, err, 5)
	ms, err := co.Members(ctx, "demo", "k")
	var order []string
	for _, m := range ms {
		order = append(order, m.Node)
	}
	check(t, "chain order", strings.Join(order, ","), err, "c,d,a")
	tok, err := co.Token(ctx, "demo")
	read, rerr := co.ReadToken(ctx, "demo")
	check(t, "token read back", read, errors.Join(err, rerr), tok)
	check(t, "sums", co.PublishSums(ctx, "demo", "k", 2, []uint64{7, 9}), nil, error(nil))
	sums, err := co.Sums(ctx, "demo", "k", 1, 3)
	check(t, "sums read back", sums, err, []uint64{0, 7, 9})
}

// chainJoin runs joinScript for a few nodes, one of them twice.
func chainJoin(t *testing.T, c *redis.Client) {
	join := redis.NewScript(joinScript)
	keys := []string{"{m:x}:chain", "{m:x}:seq"}
	for _, tc := range []struct {
		node string
		want []string
	}{
		{"a", []string{}},
		{"b", []string{"a"}},
		{"c", []string{"b"}},
		{"b", []string{"a"}},
		{"a", []string{}},
	} {
		got, err := join.Run(t.Context(), c, keys, tc.node, 60000).StringSlice()
		check(t, "join "+tc.node, got, err, tc.want)
	}
	zs, err := c.ZRangeWithScores(t.Context(), keys[0], 0, -1).Result()
	check(t, "chain", zs, err, []redis.Z{{Score: 1, Member: "a"}, {Score: 2, Member: "b"}, {Score: 3, Member: "c"}})
}

// expiry checks that keys expire with the clock (heartbeats rely on it).
func expiry(t *testing.T, c *redis.Client) {
	ctx := t.Context()
	start := time.Now()
	if err := c.Set(ctx, "expiry:px", "v", 300*time.Millisecond).Err(); err != nil {
		t.Fatal(err)
	}
	if err := c.Set(ctx, "expiry:pexpire", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := c.PExpire(ctx, "expiry:pexpire", 300*time.Millisecond).Err(); err != nil {
		t.Fatal(err)
	}
	for {
		n, err := c.Exists(ctx, "expiry:px", "expiry:pexpire").Result()
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
		if time.Since(start) > waitTimeout {
			t.Fatalf("keys with a 300 ms TTL still exist after %v", waitTimeout)
		}
		time.Sleep(20 * time.Millisecond) // polling with a deadline
	}
	if d := time.Since(start); d < 250*time.Millisecond {
		t.Errorf("keys with a 300 ms TTL expired after %v", d)
	}
}
