-- locksmith: one atomic step on one primitive, server-side.
--
-- This is backend/model.rs's `apply`, op for op, in Redis Lua. KEYS[1] is the
-- primitive's key (`{prefix}{name}`), KEYS[2..4] its queue's, KEYS[5] the prefix's token
-- floor (`{prefix}token-floor`: the highest counter of any reclaimed name, which a name
-- without a record counts on from); KEYS[1] holds the record as JSON. The same string is
-- the pub/sub channel its waiters are woken on. ARGV[1] is the queue's timing,
-- `CLAIM_TTL:WAITER_TTL` in ms (see enqueue below), ARGV[2] the op, ARGV[3..] the op's
-- arguments.
--
-- Record: { t = next_token, g = tag?, s = state?, rl = id of the last release that
--           ended a hold?, f = kind? }
--   f: the kind and parameters fixed by the name's first use, until it is removed on
--      purpose (op remove, evict, reclaim): 'lock:0', 'sem:3', 'cond:0', 'event',
--      'barrier:4', 'avg' (see OP_KIND)
--   permits: { k='permits', kind='lock'|'rlock'|'sem'|'bsem'|'rw'|'cond', n, av,
--              h = holders { tk, o, m='x'|'s', c, since, u?, w?, r? },
--              sl = sleepers { tk (string), o, nt }, od = owner_died, qs = arrivals,
--              ql = queued waiters }
--            and its queue in KEYS[2..4] (see enqueue below)
--   event:   { k='event', set }
--   barrier: { k='barrier', p, ar = owners, br, lb?, bc = why it broke?,
--              ac = whether this generation's parties have an action? }
--   averager:{ k='avg', tot (a %.17g string: exact), c, u? }
-- Owners and tickets are opaque strings (Lua numbers cannot hold a u64). Times are the
-- server's clock (TIME), in ms. Replies are flat arrays whose first element names the
-- reply; errors are { 'err', kind, ... } and leave the record untouched.

-- The code below defines `step`; the client appends either a FUNCTION library
-- registration (Redis 7: the definitions run once, at load) or `return step(KEYS, ARGV)`
-- (EVAL, older servers). The state of one step lives in these upvalues, set by `step`:
-- Redis runs one script or function at a time.
local key, QK, WK, IK, FK, CLAIM_TTL, WAITER_TTL, now, raw, rec, wake_all, wake

-- The counter a name without a record starts from.
local function token_floor()
  if FK == nil then return 0 end
  return tonumber(redis.call('GET', FK) or '0') or 0
end

local function fail(...)
  error({ ... })
end

local function optstr(x)
  if x == nil or x == '-' then return nil end
  return string.sub(x, 2)
end

local function optnum(x)
  if x == nil or x == '' then return nil end
  return tonumber(x)
end

local function is_sem(kind) return kind == 'sem' or kind == 'bsem' end

local function initial(kind, n)
  if is_sem(kind) then return n end
  return 1
end

local function describe(kind, n)
  if kind == 'lock' then return 'a Lock'
  elseif kind == 'rlock' then return 'an RLock'
  elseif kind == 'sem' then return 'a Semaphore of ' .. n
  elseif kind == 'bsem' then return 'a BoundedSemaphore of ' .. n
  elseif kind == 'rw' then return 'an RwLock'
  elseif kind == 'cond' then return 'a Condition' end
  return kind
end

local function describe_state(s)
  if s.k == 'permits' then return describe(s.kind, s.n)
  elseif s.k == 'event' then return 'an Event'
  elseif s.k == 'barrier' then return 'a Barrier of ' .. s.p .. ' parties' end
  return 'an Averager'
end

local function fmt(x) return string.format('%.17g', x) end

-- Kinds ---------------------------------------------------------------------------

local function describe_kind(f)
  local k, n = string.match(f, '^(%a+):(%d+)$')
  if k == 'barrier' then return 'a Barrier of ' .. n .. ' parties' end
  if k then return describe(k, tonumber(n)) end
  if f == 'event' then return 'an Event' end
  return 'an Averager'
end

local function kind_of_state(s)
  if s.k == 'permits' then return s.kind .. ':' .. s.n
  elseif s.k == 'event' then return 'event'
  elseif s.k == 'barrier' then return 'barrier:' .. s.p end
  return 'avg'
end

local function permits_kind(a) return a[1] .. ':' .. a[2] end
local function cond_kind() return 'cond:0' end
local function event_kind() return 'event' end
local function barrier_kind(a) return 'barrier:' .. a[1] end
local function avg_kind() return 'avg' end

-- The kind each op is for (model.rs's Op::kind); ops not listed work on any kind.
local OP_KIND = {
  acq = permits_kind, relown = permits_kind, value = permits_kind,
  condwait = cond_kind, condsleep = cond_kind, notify = cond_kind, condcheck = cond_kind,
  evset = event_kind, evclear = event_kind, evread = event_kind,
  arrive = barrier_kind, advance = barrier_kind, abort = barrier_kind,
  reset = barrier_kind, bread = barrier_kind,
  avgadd = avg_kind, avgget = avg_kind, avgpop = avg_kind,
}

-- Whether a live state is idle (model.rs's Record::tidy).
local function is_idle(s)
  if s.k == 'permits' then
    return #s.h == 0 and (s.ql or 0) == 0 and #s.sl == 0 and not s.od
      and s.av == initial(s.kind, s.n)
  elseif s.k == 'event' then
    return not s.set
  elseif s.k == 'barrier' then
    return #s.ar == 0 and not s.br and s.lb == nil
  end
  return s.c == 0
end

-- Permits -----------------------------------------------------------------------

local function permits_of(kind, n)
  local s = rec.s
  if s == nil then return nil end
  if s.k ~= 'permits' or s.kind ~= kind or s.n ~= n then
    fail('mismatch', describe(kind, n), describe_state(s))
  end
  return s
end

local function permits_held()
  local s = rec.s
  if s == nil or s.k ~= 'permits' then fail('notheld') end
  return s
end

local function new_permits(kind, n)
  local p = { k = 'permits', kind = kind, n = n, av = initial(kind, n), h = {}, sl = {},
              od = false, qs = 0, ql = 0 }
  rec.s = p
  return p
end

local function holds_exclusive(p)
  for _, h in ipairs(p.h) do
    if h.m == 'x' then return true end
  end
  return false
end

local function fits(p, mode, count, excl)
  if is_sem(p.kind) then return p.av - count > 0 end
  local busy_excl = excl or holds_exclusive(p)
  local busy = #p.h > 0 or count > 0
  if mode == 'x' then return not busy end
  return not busy_excl
end

-- The queue lives beside the record, so that a step costs O(log n) in the queue's
-- length rather than O(n): KEY:q orders tickets (score: arrival number), KEY:d says by
-- when each must try again or lose its place (score: ms), KEY:i gives each ticket's
-- mode and owner ("x owner").
--
-- A waiter must try again within WAITER_TTL (its client looks again every ten seconds
-- at most), so ten thousand of them cost little; but one that could be granted now
-- must claim it within CLAIM_TTL of being woken for it. Past its deadline a waiter is
-- skipped, not dropped: a waiter that died without leaving (SIGKILL, a lost host)
-- blocks the ones behind it for CLAIM_TTL at most (plus the time until the next
-- step), while a live one that was merely slow (a swamped process) keeps its place
-- and is granted when it comes back, if it still can be. (Dropping it instead could
-- starve everyone: when every claim takes longer than CLAIM_TTL, every head would be
-- dropped before it claims.) A waiter skipped for WAITER_TTL more is removed.

-- The record counts its queued waiters (ql), so that a primitive without a queue
-- never touches the queue's keys.
local function qlen(p) return p.ql or 0 end

local function dequeue(p, tk)
  if qlen(p) == 0 then return end
  if redis.call('ZREM', QK, tk) == 1 then p.ql = p.ql - 1 end
  redis.call('ZREM', WK, tk)
  redis.call('HDEL', IK, tk)
end

-- Queues the waiter (or keeps its place) and returns its rank.
local function enqueue(p, tk, owner, mode)
  if not redis.call('ZSCORE', QK, tk) then
    p.qs = (p.qs or 0) + 1
    p.ql = qlen(p) + 1
    redis.call('ZADD', QK, p.qs, tk)
    redis.call('HSET', IK, tk, mode .. ' ' .. owner)
  end
  redis.call('ZADD', WK, now + WAITER_TTL, tk)
  return redis.call('ZRANK', QK, tk)
end

-- How many queued waiters, from the front, could all be granted now; the permits
-- they would take, whether one of them is exclusive, and their tickets.
local function grantable_prefix(p)
  local count, excl, tickets = 0, false, {}
  if qlen(p) == 0 then return count, excl, tickets end
  local start = 0
  while true do
    local chunk = redis.call('ZRANGE', QK, start, start + 15)
    if #chunk == 0 then return count, excl, tickets end
    local infos = redis.call('HMGET', IK, unpack(chunk))
    for j, tk in ipairs(chunk) do
      -- A waiter past its deadline (woken for a grant it did not claim in time, or
      -- silent too long) is skipped: it holds up nobody behind it, and keeps its
      -- place should it come back (its next look refreshes its deadline).
      if tonumber(redis.call('ZSCORE', WK, tk) or '0') >= now then
        local m = string.sub(infos[j] or 'x', 1, 1)
        if not fits(p, m, count, excl) then return count, excl, tickets end
        count = count + 1
        excl = excl or m == 'x'
        tickets[#tickets + 1] = tk
      end
    end
    start = start + 16
  end
end

-- A queued waiter may be granted if it is among the grantable; anyone else only if
-- nobody at all is queued (a skipped waiter too: a newcomer queues behind it, and
-- passes it at its next look).
local function may_grant(p, ticket, mode)
  local prefix, excl, tickets = grantable_prefix(p)
  if ticket and qlen(p) > 0 and redis.call('ZSCORE', QK, ticket) then
    for _, tk in ipairs(tickets) do
      if tk == ticket then return true end
    end
    return false
  end
  return prefix == qlen(p) and fits(p, mode, prefix, excl)
end

local function release_at(p, i)
  local h = p.h[i]
  if h.c > 1 then
    h.c = h.c - 1
    return
  end
  table.remove(p.h, i)
  if is_sem(p.kind) then p.av = p.av + 1 end
end

local function prune(p)
  local kept, freed = {}, 0
  for _, h in ipairs(p.h) do
    if h.u == nil or h.u > now then kept[#kept + 1] = h else freed = freed + 1 end
  end
  if freed > 0 then
    p.h = kept
    p.od = true
    if is_sem(p.kind) then p.av = p.av + freed end
  end
  if qlen(p) == 0 then return end
  -- Skipped for WAITER_TTL past its deadline: gone.
  local stale = redis.call('ZRANGEBYSCORE', WK, '-inf', '(' .. (now - WAITER_TTL))
  for _, tk in ipairs(stale) do dequeue(p, tk) end
end

-- Wakes the waiters that could be granted now, and gives each CLAIM_TTL (from the
-- first time it was woken for it) to claim the grant.
local function wake_of(p, caller)
  local _, _, tickets = grantable_prefix(p)
  local by = now + CLAIM_TTL
  for _, tk in ipairs(tickets) do
    if tk ~= caller then
      wake[#wake + 1] = tk
      local due = tonumber(redis.call('ZSCORE', WK, tk) or '0')
      if due > by then redis.call('ZADD', WK, by, tk) end
    end
  end
end

local function find_holder(p, token)
  for i, h in ipairs(p.h) do
    if h.tk == token then return i end
  end
  return nil
end

-- `id` names this request (the waiter's ticket, or a number of the client's), so that a
-- request sent again after a broken connection is answered as the first was, not
-- granted twice: the hold it made remembers it (`w`).
local function acquire(kind, n, mode, owner, lease, tag, ticket, id)
  local p = permits_of(kind, n)
  if p then
    prune(p)
    for _, h in ipairs(p.h) do
      if id and h.w == id and h.o == owner then
        return { 'granted', h.tk, 0 }
      end
    end
    for _, h in ipairs(p.h) do
      if h.o == owner then
        if kind == 'rlock' or kind == 'cond' or (kind == 'rw' and h.m == 's' and mode == 's') then
          -- Re-entry never waits, not even behind the queue.
          h.c = h.c + 1
          h.w = id
          if lease then h.u = now + lease end
          return { 'granted', h.tk, 0 }
        elseif kind == 'lock' or kind == 'rw' then
          fail('deadlock')
        end
        -- A semaphore may hand several permits to one owner.
        break
      end
    end
  end
  if p == nil then p = new_permits(kind, n) end
  if tag then rec.g = tag end
  -- A waiter keeps (or takes) its place and refreshes its deadline first, so that one
  -- that was skipped and is back can be granted at once.
  local rank = -1
  if ticket then rank = enqueue(p, ticket, owner, mode) end
  if not may_grant(p, ticket, mode) then
    local retry = -1
    for _, h in ipairs(p.h) do
      if h.u and (retry < 0 or h.u < retry) then retry = h.u end
    end
    wake_of(p, ticket)
    -- The waiter's place (how soon it should look again), then the holders and the
    -- first waiters ahead of it, for the client's same-host liveness check.
    local r = { 'blocked', retry, rank }
    for _, h in ipairs(p.h) do r[#r + 1] = h.o end
    -- Only a waiter near the front looks at those ahead of it (one further back, or
    -- not yet queued, would only repeat the front's work).
    local ahead = 0
    if rank >= 0 and rank < 16 then ahead = rank end
    if ahead > 0 and qlen(p) > 0 then
      local front = redis.call('ZRANGE', QK, 0, ahead - 1)
      if #front > 0 then
        for _, info in ipairs(redis.call('HMGET', IK, unpack(front))) do
          if info then r[#r + 1] = string.sub(info, 3) end
        end
      end
    end
    return r
  end
  if ticket then dequeue(p, ticket) end
  rec.t = rec.t + 1
  local token = rec.t
  local h = { tk = token, o = owner, m = mode, c = 1, since = now, w = id }
  if lease then h.u = now + lease end
  p.h[#p.h + 1] = h
  if is_sem(kind) then p.av = p.av - 1 end
  local died = p.od
  p.od = false
  wake_of(p, ticket)
  return { 'granted', token, died and 1 or 0 }
end

local function release_owned(kind, n, owner)
  local p = permits_of(kind, n)
  if p then
    prune(p)
    for i, h in ipairs(p.h) do
      if h.o == owner then
        release_at(p, i)
        wake_of(p, nil)
        return { 'done' }
      end
    end
  end
  if is_sem(kind) then
    if p == nil then p = new_permits(kind, n) end
    local ceiling = 4294967295
    if kind == 'bsem' then ceiling = n end
    if p.av + #p.h >= ceiling then
      if #p.h == 0 or kind ~= 'bsem' then fail('toomany') end
      -- Anyone may release a semaphore: at the bound, the permit given back is the
      -- oldest holder's, whose guard will find it gone.
      release_at(p, 1)
    else
      p.av = p.av + 1
    end
    wake_of(p, nil)
    return { 'done' }
  end
  if p and #p.h > 0 then fail('notowner') end
  fail('notheld')
end

-- Events, barriers, averagers ---------------------------------------------------------

local function event_of()
  local s = rec.s
  if s == nil then return nil end
  if s.k ~= 'event' then fail('mismatch', 'an Event', describe_state(s)) end
  return s
end

local function barrier_of(parties)
  local s = rec.s
  if s == nil then
    s = { k = 'barrier', p = parties, ar = {}, br = false }
    rec.s = s
    return s
  end
  if s.k ~= 'barrier' or s.p ~= parties then
    fail('mismatch', 'a Barrier of ' .. parties .. ' parties', describe_state(s))
  end
  return s
end

local function averager_of()
  local s = rec.s
  if s and s.k == 'avg' and s.u and s.u <= now then
    rec.s = nil
    s = nil
  end
  if s == nil then return nil end
  if s.k ~= 'avg' then fail('mismatch', 'an Averager', describe_state(s)) end
  return s
end

local function mean(a)
  if a == nil or a.c == 0 then return '' end
  return fmt(tonumber(a.tot) / a.c)
end

-- The ops ---------------------------------------------------------------------------

local ops = {}

-- acq KIND N MODE OWNER LEASE TAG TICKET ID
ops.acq = function(a)
  return acquire(a[1], tonumber(a[2]), a[3], a[4], optnum(a[5]), optstr(a[6]), optstr(a[7]),
    a[8])
end

-- rel TOKEN
-- rel TOKEN ID: `id` names this request, so that one sent again after a broken
-- connection, whose first sending was applied, is answered 'done' and takes nothing
-- more: the hold remembers the last release that left it held (`r`, a re-entered
-- RLock), the record the last one that ended a hold (`rl`).
ops.rel = function(a)
  local id = a[2]
  if id and not string.match(id, '^%d+$') then id = nil end
  if id and rec.rl == id then return { 'done' } end
  local p = permits_held()
  prune(p)
  local i = find_holder(p, tonumber(a[1]))
  if i == nil then fail('notheld') end
  local h = p.h[i]
  if id and h.r == id then return { 'done' } end
  if h.c > 1 then h.r = id else rec.rl = id end
  release_at(p, i)
  wake_of(p, nil)
  return { 'done' }
end

-- relown KIND N OWNER TIMES: TIMES releases, all or nothing (a failing one raises,
-- and the record is then not written).
ops.relown = function(a)
  local r = { 'done' }
  for _ = 1, tonumber(a[4] or '1') do r = release_owned(a[1], tonumber(a[2]), a[3]) end
  return r
end

-- value KIND N: a semaphore's free permits.
ops.value = function(a)
  local p = permits_of(a[1], tonumber(a[2]))
  if p == nil then return { 'count', initial(a[1], tonumber(a[2])) } end
  prune(p)
  wake_of(p, nil)
  return { 'count', p.av }
end

ops.force = function()
  local p = rec.s
  if p == nil or p.k ~= 'permits' then return { 'count', 0 } end
  local n = #p.h
  while #p.h > 0 do release_at(p, 1) end
  -- A broken holder was cut off mid-section: the next one is told.
  if n > 0 then p.od = true end
  wake_of(p, nil)
  return { 'count', n }
end

-- deq TICKET: the waiter gives up. A hold granted to that ticket whose grant never
-- reached the waiter (the connection broke) is given back too.
ops.deq = function(a)
  local p = rec.s
  if p == nil or p.k ~= 'permits' then return { 'done' } end
  dequeue(p, a[1])
  for i, h in ipairs(p.h) do
    if h.w == a[1] then
      release_at(p, i)
      break
    end
  end
  wake_of(p, nil)
  return { 'done' }
end

-- renew TOKEN LEASE
ops.renew = function(a)
  local p = permits_held()
  prune(p)
  local i = find_holder(p, tonumber(a[1]))
  if i == nil then fail('notheld') end
  p.h[i].u = now + tonumber(a[2])
  return { 'done' }
end

-- check TOKEN
ops.check = function(a)
  local p = rec.s
  if p == nil or p.k ~= 'permits' then return { 'flag', 0 } end
  prune(p)
  local held = find_holder(p, tonumber(a[1])) ~= nil
  wake_of(p, nil)
  return { 'flag', held and 1 or 0 }
end

ops.holders = function()
  local p = rec.s
  if p == nil or p.k ~= 'permits' then return { 'holders', 0 } end
  prune(p)
  local r = { 'holders', qlen(p) + #p.sl }
  for _, h in ipairs(p.h) do
    r[#r + 1] = h.tk
    r[#r + 1] = h.o
    r[#r + 1] = h.m
    r[#r + 1] = h.c
    r[#r + 1] = h.since
    r[#r + 1] = h.u or -1
  end
  wake_of(p, nil)
  return r
end

-- condwait TOKEN TICKET OWNER
ops.condwait = function(a)
  local p = permits_of('cond', 0)
  if p == nil then fail('notheld') end
  prune(p)
  local i = find_holder(p, tonumber(a[1]))
  if i == nil then fail('notheld') end
  local levels = p.h[i].c
  if levels > 1 then fail('nested', levels) end
  release_at(p, i)
  p.sl[#p.sl + 1] = { tk = a[2], o = a[3], nt = false }
  wake_of(p, nil)
  return { 'count', levels }
end

-- condsleep TICKET OWNER: a sleeper of a condition whose lock is another name's.
ops.condsleep = function(a)
  local p = permits_of('cond', 0)
  if p == nil then p = new_permits('cond', 0) end
  p.sl[#p.sl + 1] = { tk = a[1], o = a[2], nt = false }
  return { 'done' }
end

-- relall TOKEN: every level of the hold TOKEN.
ops.relall = function(a)
  local p = permits_held()
  prune(p)
  local i = find_holder(p, tonumber(a[1]))
  if i == nil then fail('notheld') end
  local levels = p.h[i].c
  if levels > 1 then fail('nested', levels) end
  release_at(p, i)
  wake_of(p, nil)
  return { 'count', levels }
end

-- notify N
ops.notify = function(a)
  local p = permits_of('cond', 0)
  if p == nil then return { 'count', 0 } end
  local n, woken = tonumber(a[1]), 0
  for _, s in ipairs(p.sl) do
    if woken >= n then break end
    if not s.nt then
      s.nt = true
      woken = woken + 1
      wake[#wake + 1] = s.tk
    end
  end
  return { 'count', woken }
end

-- condcheck TICKET CANCEL(0|1)
ops.condcheck = function(a)
  local p = permits_of('cond', 0)
  if p == nil then return { 'flag', 1 } end
  local cancel = a[2] == '1'
  for i, s in ipairs(p.sl) do
    if s.tk == a[1] then
      if s.nt or cancel then
        table.remove(p.sl, i)
        return { 'flag', s.nt and 1 or 0 }
      end
      return { 'flag', 0 }
    end
  end
  -- Gone (evicted): nothing left to wait for.
  return { 'flag', 1 }
end

-- evset TAG
ops.evset = function(a)
  local e = event_of()
  local tag = optstr(a[1])
  if tag then rec.g = tag end
  if e and e.set then return { 'done' } end
  rec.t = rec.t + 1
  rec.s = { k = 'event', set = true }
  wake_all = true
  return { 'done' }
end

ops.evclear = function()
  if event_of() then rec.s = nil end
  return { 'done' }
end

ops.evread = function()
  local e = event_of()
  return { 'event', (e and e.set) and 1 or 0, rec.t }
end

-- arrive PARTIES OWNER TAG ACTION(0|1) ONLY_LAST(0|1)
ops.arrive = function(a)
  local generation = rec.t
  local parties = tonumber(a[1])
  local b = barrier_of(parties)
  if b.br then fail('broken', b.bc or 'unknown') end
  if #b.ar >= parties then return { 'busy' } end
  if a[5] == '1' and #b.ar + 1 < parties then return { 'notlast' } end
  local action = a[4] == '1'
  if b.ac ~= nil and b.ac ~= action then
    -- The action runs in whichever party arrives last: parties that disagree about
    -- having one would run it in some generations only.
    b.br = true
    b.bc = 'action'
    wake_all = true
    return { 'broke', 'action' }
  end
  b.ac = action
  b.ar[#b.ar + 1] = a[2]
  local tag = optstr(a[3])
  if tag then rec.g = tag end
  return { 'arrived', generation, #b.ar - 1 }
end

-- advance PARTIES GENERATION
ops.advance = function(a)
  local parties = tonumber(a[1])
  local current = rec.t
  local b = barrier_of(parties)
  if current == tonumber(a[2]) and #b.ar == parties then
    b.ar = {}
    b.ac = nil
    rec.t = rec.t + 1
    wake_all = true
  end
  return { 'done' }
end

-- abort PARTIES GENERATION? CAUSE
ops.abort = function(a)
  local current = rec.t
  local b = barrier_of(tonumber(a[1]))
  local generation = optnum(a[2])
  if generation == nil or generation == current then
    if not b.br then
      b.br = true
      b.bc = a[3]
    end
    wake_all = true
  end
  return { 'done' }
end

-- reset PARTIES
ops.reset = function(a)
  local generation = rec.t
  local b = barrier_of(tonumber(a[1]))
  if b.br or #b.ar > 0 then
    if not b.br then b.bc = 'reset' end
    b.lb = generation
    b.br = false
    b.ar = {}
    b.ac = nil
    rec.t = rec.t + 1
    wake_all = true
  end
  return { 'done' }
end

-- bread PARTIES
ops.bread = function(a)
  local generation = rec.t
  local b = barrier_of(tonumber(a[1]))
  local r = { 'barrier', generation, #b.ar, b.br and 1 or 0, b.lb or -1, b.bc or '' }
  -- The parties, for the client's same-host liveness check.
  for _, o in ipairs(b.ar) do r[#r + 1] = o end
  return r
end

-- avgadd VALUE EXPIRE TAG
ops.avgadd = function(a)
  local s = averager_of()
  local total, count = 0, 0
  if s then
    total = tonumber(s.tot)
    count = s.c
  end
  local sum = total + tonumber(a[1])
  -- An infinite sum would average to nothing useful for ever: refuse, changing nothing.
  if sum ~= sum or sum == math.huge or sum == -math.huge then fail('overflow') end
  local n = { k = 'avg', tot = fmt(sum), c = count + 1 }
  local expire = optnum(a[2])
  if expire then n.u = now + expire end
  rec.s = n
  local tag = optstr(a[3])
  if tag then rec.g = tag end
  return { 'done' }
end

ops.avgget = function() return { 'avg', mean(averager_of()) } end

ops.avgpop = function()
  local m = mean(averager_of())
  rec.s = nil
  return { 'avg', m }
end

-- reap OWNER... : the client found these owners' processes gone.
ops.reap = function(a)
  local dead = {}
  for _, o in ipairs(a) do dead[o] = true end
  local s = rec.s
  if s and s.k == 'permits' then
    local kept, freed = {}, 0
    for _, h in ipairs(s.h) do
      if dead[h.o] then freed = freed + 1 else kept[#kept + 1] = h end
    end
    if freed > 0 then
      s.h = kept
      s.od = true
      if is_sem(s.kind) then s.av = s.av + freed end
    end
    local infos = redis.call('HGETALL', IK)
    for i = 1, #infos, 2 do
      if dead[string.sub(infos[i + 1], 3)] then dequeue(s, infos[i]) end
    end
    local sl = {}
    for _, w in ipairs(s.sl) do
      if not dead[w.o] then sl[#sl + 1] = w end
    end
    s.sl = sl
    wake_of(s, nil)
    return { 'count', freed }
  elseif s and s.k == 'barrier' then
    if not s.br then
      for _, o in ipairs(s.ar) do
        if dead[o] then
          s.br = true
          s.bc = 'died'
          wake_all = true
          break
        end
      end
    end
  end
  return { 'count', 0 }
end

-- evict TAG: drop the state if tagged TAG, keeping the counter.
-- A lock or semaphore whose holds were cut short keeps just that fact (od), so the
-- next holder is told, as after force.
ops.evict = function(a)
  if rec.s ~= nil and rec.g == a[1] then
    redis.call('DEL', QK, WK, IK)
    local s = rec.s
    rec.s = nil
    rec.g = nil
    -- Evicting is removing on purpose: the kind is forgotten.
    rec.f = nil
    if s.k == 'permits' and (#s.h > 0 or s.od) then
      new_permits(s.kind, s.n).od = true
    end
    wake_all = true
    return { 'count', 1 }
  end
  return { 'count', 0 }
end

-- remove: forget the kind of an idle name, keeping the counter.
ops.remove = function()
  if rec.s ~= nil and not is_idle(rec.s) then fail('busy') end
  rec.s = nil
  rec.g = nil
  local had = rec.f ~= nil
  rec.f = nil
  return { 'flag', had and 1 or 0 }
end

-- The uncontended paths ----------------------------------------------------------------
--
-- Decoding and encoding the JSON record is most of a step's cost, so the two steps of
-- an uncontended cycle skip it: a grant on an idle primitive (record absent or just
-- `{"t":N}`) and the release of its one hold. They write ordinary JSON in a fixed field
-- order, which the general path reads like any other; a record in any other shape, or
-- any case these do not cover, takes the general path. They decide exactly as it would.

-- An idle record in its one written form: {"t":N[,"f":"F"][,"rl":"ID"]} (cjson's key
-- order is the table's, not fixed, so the fast paths could not read what it writes).
local function idle_json(t, f, rl)
  local out = '{"t":' .. string.format('%d', t)
  if f then out = out .. ',"f":"' .. f .. '"' end
  if rl then out = out .. ',"rl":"' .. rl .. '"' end
  return out .. '}'
end

local KINDS = { lock = true, rlock = true, sem = true, bsem = true, rw = true, cond = true }

-- The counter and kind of an idle record (no state, no tag: just `t`, maybe `f` and
-- `rl`, in any order); nil for any other.
local function idle_record(r)
  if string.find(r, '"s":', 1, true) or string.find(r, '"g":', 1, true) then return nil end
  local t = tonumber(string.match(r, '"t":(%d+)'))
  if t == nil then return nil end
  return t, string.match(r, '"f":"([%a:%d]+)"')
end

-- acq KIND N MODE OWNER LEASE TAG TICKET ID, on an idle primitive (record absent, or
-- just its counter and the last release's id): granted with nothing to
-- prune, nobody queued (an idle record has no queue) and nobody to wake.
local function fast_acquire(a)
  local t, f
  if raw then
    t, f = idle_record(raw)
    if t == nil then return nil end
  else
    t = token_floor()
  end
  local kind, n, mode, lease = a[3], tonumber(a[4]), a[5], optnum(a[7])
  if not KINDS[kind] or n == nil or lease == nil or (mode ~= 'x' and mode ~= 's') then
    return nil
  end
  -- Another kind: the general path says so.
  if f ~= nil and f ~= kind .. ':' .. n then return nil end
  local av = initial(kind, n)
  if av < 1 then return nil end
  if is_sem(kind) then av = av - 1 end
  local id = a[10]
  if id == nil or not string.match(id, '^%d+$') then return nil end
  local tag, g = optstr(a[8]), ''
  if tag then g = ',"g":' .. cjson.encode(tag) end
  t = t + 1
  redis.call('SET', key, string.format(
    '{"t":%d,"f":"%s:%d","s":{"k":"permits","kind":"%s","n":%d,"av":%d,"h":[{"tk":%d,"o":%s,'
      .. '"m":"%s","c":1,"since":%d,"u":%d,"w":"%s"}],"sl":{},"od":false,"qs":0,"ql":0}%s}',
    t, kind, n, kind, n, av, t, cjson.encode(a[6]), mode, now, now + lease, id, g))
  return { 'granted', t, 0 }
end

-- rel TOKEN ID, of the only hold (count 1, lease not lapsed) of a primitive with no
-- queue and no sleepers, leaving it idle: the record shrinks to its counter, its kind
-- and the release's id; nobody to wake.
local function fast_release(token, id)
  if raw == nil or id == nil or not string.match(id, '^%d+$') then return nil end
  local t, f, kind, n, av, tk, rest = string.match(raw,
    '^{"t":(%d+),"f":"([%a:%d]+)","s":{"k":"permits","kind":"(%a+)","n":(%d+),"av":(%d+),'
      .. '"h":%[{"tk":(%d+),"o":"(.*)$')
  if tk == nil or tk ~= token then return nil end
  -- A JSON string never holds `","`, so the owner ends at the first `","m":"`.
  local c, u, tail = string.match(rest,
    '^.-","m":"%a","c":(%d+),"since":%d+,"u":(%d+),"w":"%d+"}%],"sl":{},"od":false,"qs":%d+,"ql":0}(.*)$')
  if c ~= '1' or tonumber(u) <= now then return nil end
  if tail ~= '}' and string.sub(tail, 1, 5) ~= ',"g":' then return nil end
  n, av = tonumber(n), tonumber(av)
  if is_sem(kind) then av = av + 1 end
  if av ~= initial(kind, n) then return nil end
  redis.call('SET', key, '{"t":' .. t .. ',"f":"' .. f .. '","rl":"' .. id .. '"}')
  return { 'done' }
end

-- reclaim: forgets an idle name (its record is just its counter), raising the floor
-- to that counter first, so the name counts on from above it if it is used again.
local function reclaim()
  if raw == nil then return { 'count', 0 } end
  local t = idle_record(raw)
  if t == nil or FK == nil then return { 'count', 0 } end
  if t > token_floor() then redis.call('SET', FK, t) end
  redis.call('DEL', key)
  return { 'count', 1 }
end

-- Dispatch, tidy, store, wake -------------------------------------------------------------

local function step(KEYS, ARGV)
key = KEYS[1]
QK, WK, IK, FK = KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local claim_ttl, waiter_ttl = string.match(ARGV[1], '^(%d+):(%d+)$')
CLAIM_TTL, WAITER_TTL = tonumber(claim_ttl), tonumber(waiter_ttl)
local clock = redis.call('TIME')
now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
-- A missing key reads as false; nil is what the checks below mean by "no record".
raw = redis.call('GET', key) or nil
local fast
if ARGV[2] == 'acq' then fast = fast_acquire(ARGV)
elseif ARGV[2] == 'rel' then fast = fast_release(ARGV[3], ARGV[4])
elseif ARGV[2] == 'reclaim' then return reclaim() end
if fast then return fast end
local start_t = 0
if raw then rec = cjson.decode(raw) else start_t = token_floor(); rec = { t = start_t } end
wake_all = false
wake = {}

local handler = ops[ARGV[2]]
if handler == nil then return { 'err', 'bug', 'unknown op ' .. tostring(ARGV[2]) } end
local args = {}
for i = 3, #ARGV do args[#args + 1] = ARGV[i] end
-- The kind is fixed by the first op that names one, and checked by every later one,
-- busy or idle.
if rec.f == nil and rec.s ~= nil then rec.f = kind_of_state(rec.s) end
local fixing = OP_KIND[ARGV[2]]
local wanted
if fixing then wanted = fixing(args) end
local ok, reply
local s = rec.s
if ARGV[2] == 'arrive' and s and s.k == 'barrier' and s.p ~= tonumber(args[1])
  and not s.br and #s.ar > 0 then
  -- A party that disagrees about the parties: the filling generation would never
  -- pass, so it breaks, and its waiters learn why.
  s.br = true
  s.bc = 'parties'
  wake_all = true
  ok, reply = true, { 'pmismatch', s.p }
else
  if wanted and rec.f and rec.f ~= wanted then
    return { 'err', 'mismatch', describe_kind(wanted), describe_kind(rec.f) }
  end
  ok, reply = pcall(handler, args)
end
if not ok then
  if type(reply) == 'table' then
    local r = { 'err' }
    for _, x in ipairs(reply) do r[#r + 1] = x end
    return r
  end
  return { 'err', 'bug', tostring(reply) }
end

if wanted and rec.f == nil then rec.f = wanted end

-- Drop the state of an idle primitive, keeping the fencing counter and the kind.
if rec.s == nil or is_idle(rec.s) then
  rec.s = nil
  rec.g = nil
end

if rec.s == nil and rec.g == nil and rec.f == nil
  and (rec.t == 0 or (raw == nil and rec.t == start_t)) then
  -- Nothing to keep: no counter, or only the one the name starts from anyway.
  if raw then redis.call('DEL', key) end
else
  local out
  if rec.s == nil and rec.g == nil then
    -- An idle record in the one form the fast paths and reclaim() read (cjson's key
    -- order is the table's, not fixed).
    out = idle_json(rec.t, rec.f, rec.rl)
  else
    out = cjson.encode(rec)
  end
  if out ~= raw then redis.call('SET', key, out) end
end

if wake_all then
  redis.call('PUBLISH', key, '*')
elseif #wake > 0 then
  redis.call('PUBLISH', key, table.concat(wake, ' '))
end
return reply
end
