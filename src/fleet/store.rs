//! The fleet's one exchange with the store per sync: a Lua script (EVALSHA, loaded once)
//! that files this instance's report, renews or takes the leader key (with an epoch that
//! fences a stale leader's plan), writes the leader's plan, appends operator writes, and
//! answers with what this instance needs back. One command per instance per sync.

use std::time::Duration;

use redis::aio::ConnectionManager;

/// The keys of one fleet, in one hash slot (`{…}`) so a Redis Cluster can hold them too.
pub fn keys(name: &str) -> [String; 9] {
    [
        "reports", "seen", "leader", "epoch", "plan", "ops", "opseq", "told", "toldseq",
    ]
    .map(|k| format!("{{warmgate:{name}}}:{k}"))
}

const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local me, lease = ARGV[1], tonumber(ARGV[2])
redis.call('HSET', KEYS[1], me, ARGV[3])
redis.call('HSET', KEYS[2], me, now)
local seen = redis.call('HGETALL', KEYS[2])
local live = {}
for i = 1, #seen, 2 do
  local age = now - tonumber(seen[i + 1])
  if age > 3 * lease then
    redis.call('HDEL', KEYS[1], seen[i])
    redis.call('HDEL', KEYS[2], seen[i])
  elseif age <= lease then
    live[#live + 1] = seen[i]
  end
end
local leader = redis.call('GET', KEYS[3])
if not leader then
  redis.call('SET', KEYS[3], me, 'PX', lease)
  redis.call('INCR', KEYS[4])
  leader = me
elseif leader == me then
  redis.call('PEXPIRE', KEYS[3], lease)
end
local epoch = tonumber(redis.call('GET', KEYS[4]) or '0')
if leader == me and ARGV[4] ~= '' and tonumber(ARGV[6]) == epoch then
  redis.call('SET', KEYS[5], ARGV[4], 'PX', 3 * lease)
end
if ARGV[5] ~= '' then
  for op in string.gmatch(ARGV[5], '[^\n]+') do
    local seq = redis.call('INCR', KEYS[7])
    redis.call('RPUSH', KEYS[6], seq .. ' ' .. op)
  end
  redis.call('LTRIM', KEYS[6], -1000, -1)
end
local last = tonumber(redis.call('GET', KEYS[7]) or '0')
local from = tonumber(ARGV[7])
local ops = {}
if from >= 0 and last > from then
  ops = redis.call('LRANGE', KEYS[6], -math.min(last - from, 1000), -1)
end
if ARGV[8] ~= '' then
  local seq = redis.call('INCR', KEYS[9])
  redis.call('RPUSH', KEYS[8], seq .. ' ' .. ARGV[8])
  redis.call('LTRIM', KEYS[8], -500, -1)
  redis.call('PEXPIRE', KEYS[8], 60000)
  redis.call('PEXPIRE', KEYS[9], 60000)
end
local tlast = tonumber(redis.call('GET', KEYS[9]) or '0')
local tfrom = tonumber(ARGV[9])
local told = {}
if tfrom >= 0 and tlast > tfrom then
  told = redis.call('LRANGE', KEYS[8], -math.min(tlast - tfrom, 500), -1)
end
local reports = {}
if leader == me then
  for _, m in ipairs(live) do
    reports[#reports + 1] = m
    reports[#reports + 1] = redis.call('HGET', KEYS[1], m) or ''
  end
end
return {now, leader, epoch, redis.call('GET', KEYS[5]) or '', last, ops, reports, tlast, told}
";

/// What one sync sends.
pub struct Outgoing<'a> {
    pub instance: &'a str,
    pub lease_ms: u64,
    pub report: String,
    /// The leader's plan (empty: none) and the epoch it was made under.
    pub plan: String,
    pub epoch: u64,
    /// Operator writes, one JSON per line.
    pub ops: String,
    /// The last operator write applied here (`None`: none yet; skip the history).
    pub ops_from: Option<u64>,
    /// What clients were told here since the last sync (JSON; empty: nothing), and the last
    /// batch of other instances' read (`None`: skip the history).
    pub told: String,
    pub told_from: Option<u64>,
}

/// What one sync brings back.
#[derive(Debug)]
pub struct Incoming {
    pub now_ms: u64,
    pub leader: String,
    pub epoch: u64,
    pub plan: String,
    pub ops_last: u64,
    /// `seq json` lines.
    pub ops: Vec<String>,
    /// Leader only: (instance, report JSON) of every live instance.
    pub reports: Vec<(String, String)>,
    pub told_last: u64,
    /// `seq json` lines of what instances told clients.
    pub told: Vec<String>,
}

/// The script, hashed once.
pub fn script() -> redis::Script {
    redis::Script::new(SCRIPT)
}

/// One exchange.
pub async fn exchange(
    con: &mut ConnectionManager,
    script: &redis::Script,
    keys: &[String; 9],
    out: Outgoing<'_>,
) -> redis::RedisResult<Incoming> {
    let mut inv = script.prepare_invoke();
    for k in keys {
        inv.key(k);
    }
    let from = out.ops_from.map_or(-1, |f| f as i64);
    inv.arg(out.instance)
        .arg(out.lease_ms)
        .arg(out.report)
        .arg(out.plan)
        .arg(out.ops)
        .arg(out.epoch)
        .arg(from)
        .arg(out.told)
        .arg(out.told_from.map_or(-1, |f| f as i64));
    type Answer = (
        u64,
        String,
        u64,
        String,
        u64,
        Vec<String>,
        Vec<String>,
        u64,
        Vec<String>,
    );
    let (now_ms, leader, epoch, plan, ops_last, ops, flat, told_last, told): Answer =
        inv.invoke_async(con).await?;
    let reports = flat
        .chunks(2)
        .filter_map(|c| match c {
            [a, b] => Some((a.clone(), b.clone())),
            _ => None,
        })
        .collect();
    Ok(Incoming {
        now_ms,
        leader,
        epoch,
        plan,
        ops_last,
        ops,
        reports,
        told_last,
        told,
    })
}

/// A connection manager that reconnects by itself; `timeout` bounds every command.
pub async fn connect(
    info: &redis::ConnectionInfo,
    timeout: Duration,
) -> redis::RedisResult<ConnectionManager> {
    let client = redis::Client::open(info.clone())?;
    let cfg = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(2)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(2));
    ConnectionManager::new_with_config(client, cfg).await
}
