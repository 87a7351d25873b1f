-- Argo CD health check for SecretSync (infisical-sync.dev). Reads only what the operator
-- writes: status.observedGeneration and the Ready, Stalled and Reconciling conditions.
-- Healthy: synced (or a dry run planned) for the current generation.
-- Progressing: no status yet, a generation the operator has not reached, or a transient
--   failure it retries (Reconciling).
-- Suspended: the Ready reason is Suspended (spec.suspend is true and the operator has acted on
--   it) or ApprovalRequired (a change request waits for approval in Infisical).
-- Degraded: it waits for someone to fix something (Stalled): a missing Secret, refused
--   credentials, held deletes to confirm, an invalid spec.
local hs = {}

local function find(conditions, kind)
  if conditions == nil then
    return nil
  end
  for _, condition in ipairs(conditions) do
    if condition.type == kind then
      return condition
    end
  end
  return nil
end

local generation = 0
if obj.metadata ~= nil and obj.metadata.generation ~= nil then
  generation = obj.metadata.generation
end
local status = obj.status
-- The CRD defaults status.observedGeneration to -1 until the operator writes a status.
if status == nil or status.observedGeneration == nil or status.observedGeneration < 1 then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator's first sync"
  return hs
end
if status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Generation " .. generation .. " is not synced yet (status is for generation "
    .. status.observedGeneration .. ")"
  return hs
end

local ready = find(status.conditions, "Ready")
if ready == nil or (ready.observedGeneration ~= nil and ready.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator's first sync"
  return hs
end
local message = ready.message or ""
-- reason is optional in the CRD schema: never concatenate nil (a Lua error in Argo CD).
local reason = ready.reason or "NotReady"
if ready.status == "True" then
  hs.status = "Healthy"
  hs.message = message
  return hs
end
if reason == "Suspended" or reason == "ApprovalRequired" then
  hs.status = "Suspended"
  hs.message = message
  return hs
end
local stalled = find(status.conditions, "Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = reason .. ": " .. message
  return hs
end
local reconciling = find(status.conditions, "Reconciling")
if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = reason .. ": " .. message
  return hs
end
-- Not Ready and neither condition says why (a status written before the operator wrote them).
hs.status = "Degraded"
hs.message = reason .. ": " .. message
return hs
