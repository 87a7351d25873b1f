-- Argo CD health check for ClusterInfisicalConnection (infisical-sync.dev): the same as for
-- InfisicalConnection. Reads only what the operator writes: status.observedGeneration and the
-- Ready, Stalled and Reconciling conditions (not the counts of SecretSyncs using it: a
-- SecretSync outside the namespaceSelector is that SecretSync's problem, not the connection's).
-- Healthy: validated for the current generation (also while a 429 defers a re-validation).
-- Progressing: not validated yet, a generation the operator has not reached, or a transient
--   failure it retries (Reconciling: unreachable, rate limited, server errors).
-- Degraded: it waits for someone to fix something (Stalled): a credentials Secret missing from
--   the operator's namespace, refused credentials (or a Kubernetes Auth login refused, its
--   service account missing), a TLS problem, an instance URL the operator does not allow.
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
  hs.message = "Waiting for the operator's first validation"
  return hs
end
if status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Generation " .. generation .. " is not validated yet (status is for generation "
    .. status.observedGeneration .. ")"
  return hs
end

local ready = find(status.conditions, "Ready")
if ready == nil or (ready.observedGeneration ~= nil and ready.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator's first validation"
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
-- Not Ready and neither condition says why (a status from an operator before they were written).
hs.status = "Degraded"
hs.message = reason .. ": " .. message
return hs
