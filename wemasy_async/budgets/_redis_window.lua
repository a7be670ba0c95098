-- WindowState (budgets/_window.py) kept in Redis for a fleet: a line-for-line port, so every decision
-- equals the Python reference's (a property test drives both); the design is in docs/design/fleet.md.
--
-- KEYS[1] the state hash, KEYS[2] the leases (sorted set), KEYS[3] the wake channel, KEYS[4] the names of
-- tickets whose caller left before its acquire was run (sorted set, scored by when they are forgotten),
-- KEYS[5] the interactive callers waiting (sorted set, scored by when they are forgotten: a second after the
-- end of their wait, when they would have asked again).
-- ARGV[1] operation: acquire | answered | no_answer | release | abandon | withdraw | view
-- ARGV[2] now: '' for Redis's TIME (always, outside tests)
-- ARGV[3] window seconds, ARGV[4] assumed limit, ARGV[5] key time-to-live (ms), ARGV[6] lease seconds
-- acquire: ARGV[7] the ticket's name, chosen by the caller ('' for a counter's): a caller that gave up
--   before the answer names it to abandon, so a grant that came too late is found and given back.
--   ARGV[8] '1' for a bulk call; ARGV[9] how many interactive calls of the caller's process began to ask
--   since its last acquire (counted in the window's interactive demand, whatever the answer; '': none); ARGV[10] the name of an interactive caller's line (its
--   process's interactive callers; '': none): while one waits, anywhere in the fleet, bulk calls are not
--   granted (they wait in turn); ARGV[11] '1' when more of that line's callers wait behind this one (the
--   line keeps its place when this one is granted).
-- withdraw: ARGV[7] the name of an interactive line none of whose callers waits any more: its waiting
--   mark goes (before its time), and the bulk callers held back for it may go.
-- abandon: ARGV[7] a ticket's name: its lease is released (the request was never sent), and the name is
--   kept (lease seconds) so that its acquire, if run later (not yet run, or run again), grants nothing.
-- answered / no_answer / release: ARGV[7] ticket (its lease's member: epoch:answers_before:id),
--   ARGV[8] status, ARGV[9] X-RateLimit-Limit, ARGV[10] X-RateLimit-Remaining, ARGV[11] Retry-After
--   seconds ('' when absent)
--
-- Returns {kind, a, b} and the budget's view (see view_fields): acquire {'ticket', member, ''} or
-- {'wait', reason, seconds to wait ('' to wait for an answer)} or {'gone', '', ''} (abandoned); the others {'ok' or 'settled', seconds the
-- gate stays closed, ''}. Numbers go back as strings: Redis would cut a Lua number to an integer.

local state_key, leases_key, channel, gone_key, waiting_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local op = ARGV[1]
local now
if ARGV[2] ~= '' then
  now = tonumber(ARGV[2])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local W = tonumber(ARGV[3])
local assumed_limit = tonumber(ARGV[4])
local ttl = tonumber(ARGV[5])
local lease_seconds = tonumber(ARGV[6])
local MIN_THROTTLE_WAIT = 0.05
local RETRY_AFTER_ROUNDING = 1.0
local LEND_FRACTION = 0.1
local INF = math.huge

local raw = redis.call('HGETALL', state_key)
local h = {}
for i = 1, #raw, 2 do
  h[raw[i]] = tonumber(raw[i + 1])
end
-- nil: unknown (limit, window end, others' use of the last window); the gate and last settlement: -inf.
local s = {
  limit = h.limit, window_end = h.window_end, gate = h.gate or -INF, epoch = h.epoch or 0,
  granted = h.granted or 0, others = h.others or 0, learned = h.learned or 0, before = h.before,
  answers = h.answers or 0, sent = h.sent or 0, settled = h.settled or 0, last = h.last or -INF,
  next_id = h.next_id or 0, st_sent = h.st_sent or 0, st_throttled = h.st_throttled or 0,
  -- interactive asks in this window, and in each of the last three (r1 the latest; nil: no such window)
  asked = h.asked or 0, r1 = h.r1, r2 = h.r2, r3 = h.r3,
}
local FIELDS = {'limit', 'window_end', 'gate', 'epoch', 'granted', 'others', 'learned', 'before', 'answers',
  'sent', 'settled', 'last', 'next_id', 'st_sent', 'st_throttled', 'asked', 'r1', 'r2', 'r3'}

local function save()
  local set, del = {}, {}
  for _, f in ipairs(FIELDS) do
    local v = s[f]
    if v == nil or v == -INF then
      del[#del + 1] = f
    else
      set[#set + 1] = f
      set[#set + 1] = string.format('%.17g', v)
    end
  end
  if #del > 0 then redis.call('HDEL', state_key, unpack(del)) end
  if #set > 0 then redis.call('HSET', state_key, unpack(set)) end
  redis.call('PEXPIRE', state_key, ttl)
  if redis.call('EXISTS', leases_key) == 1 then redis.call('PEXPIRE', leases_key, ttl) end
  if redis.call('EXISTS', gone_key) == 1 then redis.call('PEXPIRE', gone_key, ttl) end
  if redis.call('EXISTS', waiting_key) == 1 then redis.call('PEXPIRE', waiting_key, ttl) end
end

local function str(v)
  if v == nil then return '' end
  return string.format('%.17g', v)
end

local function epoch_of(member)
  return tonumber(string.match(member, '^(%d+):'))
end

local function answers_before_of(member)
  return tonumber(string.match(member, '^%d+:(%d+):'))
end

-- Leases whose deadline passed: requests of a process that is gone, settled without an answer then.
local expired = redis.call('ZRANGEBYSCORE', leases_key, '-inf', now, 'WITHSCORES')
for i = 1, #expired, 2 do
  local deadline = tonumber(expired[i + 1])
  redis.call('ZREM', leases_key, expired[i])
  if epoch_of(expired[i]) == s.epoch then s.settled = s.settled + 1 end
  if deadline > s.last then s.last = deadline end
end
local in_flight = redis.call('ZCARD', leases_key)
redis.call('ZREMRANGEBYSCORE', gone_key, '-inf', now)
redis.call('ZREMRANGEBYSCORE', waiting_key, '-inf', now)

-- The lease of the ticket named name (its member ends in ':' .. name), or nil.
local function lease_named(name)
  local suffix = ':' .. name
  for _, member in ipairs(redis.call('ZRANGE', leases_key, 0, -1)) do
    if string.sub(member, -#suffix) == suffix then return member end
  end
  return nil
end

local function new_epoch(window_end, carried, others)
  s.epoch = s.epoch + 1
  s.r3, s.r2, s.r1 = s.r2, s.r1, s.asked
  s.asked = 0
  if s.answers > 0 then s.before = s.learned end
  s.window_end = window_end
  s.granted = carried
  s.others = others
  s.learned = 0
  s.answers, s.sent, s.settled = 0, 0, 0
end

local function gate_left()
  return math.max(0, s.gate - now)
end

-- WindowState.reserved: the slots of this window that bulk work leaves free.
local function reserved(limit)
  local half = math.floor(limit / 2)
  local interactive = math.max(1, s.r1 or 0, s.r2 or 0, s.r3 or 0)
  local before = s.before or 0
  local others = 0
  if before > 0 then others = math.max(before + 1, 2 * before) end
  return math.min(half, math.max(0, interactive - s.asked) + math.max(0, others - s.learned))
end

-- WindowState._until_lent: only reserved slots are free, for bulk work.
local function until_lent()
  if s.window_end == nil then
    if in_flight > 0 then return {'reserve', nil} end
    return nil
  end
  local lend_at = s.window_end - LEND_FRACTION * W
  if now < lend_at then return {'reserve', lend_at} end
  if in_flight > 0 and ((s.before or 0) > 0 or s.learned > 0) then return {'shared', nil} end
  return nil
end

-- WindowState.peek: nil when a ticket is free, else {reason, until (or nil: at the next answer)}.
local function peek(bulk)
  if now < s.gate then return {'gate', s.gate} end
  if s.window_end ~= nil and now >= s.window_end then new_epoch(nil, in_flight, 0) end
  local limit = s.limit
  if limit == nil then
    if in_flight > 0 then return {'probe', nil} end
    return nil
  end
  if s.before ~= 0 and s.sent - s.settled >= math.max(1, s.settled) then return {'probe', nil} end
  local free = limit - s.granted - s.others
  if free <= 0 then
    if s.window_end == nil then
      if in_flight > 0 then return {'window', nil} end
      s.window_end = s.last + W
      if now >= s.window_end then
        new_epoch(nil, 0, 0)
        return nil
      end
    end
    return {'window', s.window_end}
  end
  if bulk and free <= reserved(limit) then
    local lent = until_lent()
    if lent ~= nil then return lent end
  end
  local before = s.before or 0
  if in_flight > 0 and (before > 0 or s.learned > 0) then
    local epoch_flight = s.sent - s.settled
    local may_use = math.max(2 * s.learned + epoch_flight, before - s.learned)
    if free <= math.max(1, may_use) then return {'shared', nil} end
  end
  return nil
end

local function throttled(retry_after, limit)
  local estimate = nil
  if s.window_end ~= nil and s.window_end > now then estimate = s.window_end end
  local until_
  if retry_after == nil then
    until_ = estimate or (now + W)
  else
    local low, high = now + retry_after, now + retry_after + RETRY_AFTER_ROUNDING
    if estimate == nil or estimate < low then until_ = high else until_ = math.min(estimate, high) end
  end
  s.gate = math.max(s.gate, until_, now + MIN_THROTTLE_WAIT)
  local before = math.max(s.before or 0, s.learned, 1)
  new_epoch(s.gate, 0, limit)
  s.before = before
end

local result
local member = ARGV[7] or ''
if op == 'abandon' then
  local found = lease_named(member)
  -- The name is kept either way: the acquire may reach Redis again (a client that re-sends a command after
  -- a timeout sends it twice), and a later copy must grant nothing either.
  redis.call('ZADD', gone_key, now + lease_seconds, member)
  if found == nil then
    result = {'settled', str(gate_left()), ''}
    op = 'abandoned'
  else
    member = found
    op = 'release'
  end
end
if op == 'abandoned' then
  -- nothing changes but the name kept
elseif op == 'withdraw' then
  -- an interactive line whose callers all gave up (a deadline, a cancel): bulk calls need not wait for it
  if redis.call('ZREM', waiting_key, member) == 1 and redis.call('ZCARD', waiting_key) == 0 then
    redis.call('PUBLISH', channel, 'turn')
  end
  result = {'ok', str(gate_left()), ''}
elseif op == 'acquire' and member ~= '' and redis.call('ZREM', gone_key, member) == 1 then
  result = {'gone', '', ''}  -- its caller left before this ran: no ticket
elseif op == 'acquire' and member ~= '' and lease_named(member) ~= nil then
  -- This acquire ran before (a client re-sends a command after a timeout): the same ticket, not a second.
  result = {'ticket', lease_named(member), ''}
elseif op == 'acquire' then
  local bulk = ARGV[8] == '1'
  local waiter = ARGV[10] or ''
  local decision
  if bulk and redis.call('ZCARD', waiting_key) > 0 then
    decision = {'queue', nil}  -- an interactive caller waits: it goes first, anywhere in the fleet
  else
    decision = peek(bulk)
  end
  if not bulk then s.asked = s.asked + (tonumber(ARGV[9]) or 0) end
  if waiter ~= '' then
    if decision == nil and ARGV[11] == '1' then
      redis.call('ZADD', waiting_key, now + 1, waiter)  -- the next of its line asks at once
    elseif decision == nil then
      if redis.call('ZREM', waiting_key, waiter) == 1 and redis.call('ZCARD', waiting_key) == 0 then
        redis.call('PUBLISH', channel, 'turn')  -- the bulk callers held back for it may go
      end
    else
      redis.call('ZADD', waiting_key, (decision[2] or now) + 1, waiter)
    end
  end
  if decision == nil then
    s.granted = s.granted + 1
    s.sent = s.sent + 1
    s.st_sent = s.st_sent + 1
    s.next_id = s.next_id + 1
    if member == '' then member = tostring(s.next_id) end
    member = s.epoch .. ':' .. s.answers .. ':' .. member
    redis.call('ZADD', leases_key, now + lease_seconds, member)
    in_flight = in_flight + 1
    result = {'ticket', member, ''}
  else
    local wait = ''
    if decision[2] ~= nil then wait = str(decision[2] - now) end
    result = {'wait', decision[1], wait}
  end
elseif op == 'answered' or op == 'no_answer' or op == 'release' then
  local epoch = epoch_of(member)
  -- Past the window's estimated end, a new one begins first: this request, if still in flight, is carried
  -- into it (it may have been counted there), never read as the old window's.
  if op ~= 'release' and s.window_end ~= nil and now >= s.window_end then new_epoch(nil, in_flight, 0) end
  if redis.call('ZREM', leases_key, member) == 0 then
    result = {'settled', str(gate_left()), ''}  -- settled before, or its lease ran out: nothing to do
    op = 'settled'
  end
  if op ~= 'settled' then in_flight = in_flight - 1 end
  if op == 'settled' then
    -- nothing changes
  elseif op == 'release' then
    s.st_sent = s.st_sent - 1
    if epoch == s.epoch then
      s.sent = s.sent - 1
      if s.granted > 0 then s.granted = s.granted - 1 end
    end
    result = {'ok', str(gate_left()), ''}
  else
    if epoch == s.epoch then s.settled = s.settled + 1 end
    if now > s.last then s.last = now end
    result = {'ok', str(gate_left()), ''}
    if op == 'answered' then
      local status = tonumber(ARGV[8])
      local hint_limit, remaining, retry_after = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
      if hint_limit ~= nil and hint_limit > 0 then
        s.limit = hint_limit
      elseif s.limit == nil then
        s.limit = assumed_limit
      end
      local limit = s.limit
      if status == 429 then
        s.st_throttled = s.st_throttled + 1
        throttled(retry_after, limit)
        result = {'ok', str(s.gate - now), ''}
      elseif epoch == s.epoch then
        if s.window_end == nil then s.window_end = now + W end
        if remaining == nil then
          s.answers = s.answers + 1
        else
          local count = limit - remaining
          local answers_before = answers_before_of(member)
          if answers_before > 0 and count <= answers_before then
            new_epoch(now + W, in_flight + count, 0)
            s.answers, s.sent, s.settled = 1, 1, 1
          else
            local others = count - s.granted
            if others > s.learned then
              s.learned = others
              s.others = math.max(s.others, others)
            end
            s.answers = s.answers + 1
          end
        end
      end
    end
  end
  if op ~= 'settled' then redis.call('PUBLISH', channel, 'settled') end
elseif op == 'view' then
  result = {'view', '', ''}
else
  return redis.error_reply('unknown operation ' .. tostring(op))
end

-- WindowState.view: limit, remaining, window ends in, gate closed for, in flight, shared, the fleet's
-- requests sent and 429s, and the slots reserved from bulk work; then the time it was made (a process keeps the newest of the views it reads).
local window_open = s.window_end ~= nil and now < s.window_end
local remaining, ends_in = nil, nil
if s.limit ~= nil then
  if s.window_end ~= nil and not window_open then
    remaining = s.limit
  else
    remaining = math.max(0, s.limit - s.granted - s.others)
  end
end
if window_open then ends_in = s.window_end - now end
local shared = '0'
if (s.before or 0) > 0 or s.learned > 0 then shared = '1' end
local reserve = 0
if s.limit ~= nil then reserve = reserved(s.limit) end
local view = {str(s.limit), str(remaining), str(ends_in), str(gate_left()), tostring(in_flight), shared,
  tostring(s.st_sent), tostring(s.st_throttled), tostring(reserve), str(now)}
for _, v in ipairs(view) do result[#result + 1] = v end
save()
return result
