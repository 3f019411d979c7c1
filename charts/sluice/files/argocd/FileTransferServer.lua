-- Argo CD health check for sluice.dev/FileTransferServer
-- (argocd-cm key resource.customizations.health.sluice.dev_FileTransferServer).
-- Lua 5.1, as Argo CD runs it (gopher-lua). Reads what the operator writes: status.observedGeneration,
-- Ready, and the kstatus conditions Stalled and Reconciling. docs/gitops.md gives the mapping and why.
local hs = { status = "Progressing", message = "Waiting for the operator to write a status" }

-- Ready=False reasons the operator cannot get past without a change to the object or to the
-- cluster (it also sets Stalled=True for them; this covers a status without Stalled). Any other
-- Ready=False reason (NotReady: pods starting, a certificate or a load-balancer address pending;
-- ObjectStoreSecretNotFound: the object store's Secret comes later in the sync) is Progressing. No string library: Argo CD opens only base, table and os for these scripts.
local permanent = {
  InvalidSpec = true,
  ConfigMapNotApplied = true,
  UsersSecretNotApplied = true,
  SshHostKeyNotApplied = true,
  ServiceNotApplied = true,
  StatefulSetNotApplied = true,
  NetworkPolicyNotApplied = true,
  PodDisruptionBudgetNotApplied = true,
}

-- Each argocd-cm key holds one self-contained script: this lookup and the generation check
-- are in both scripts on purpose.
local function condition(type_)
  for _, c in ipairs(obj.status.conditions or {}) do
    if c.type == type_ then
      return c
    end
  end
  return nil
end

local function message(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return fallback
end

if obj.status == nil then
  return hs
end
local ready = condition("Ready")
local stalled = condition("Stalled")
local reconciling = condition("Reconciling")
local generation = obj.metadata.generation
local observed = obj.status.observedGeneration

if generation ~= nil and (observed == nil or observed < generation) then
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation) ..
    " (the status is of generation " .. tostring(observed) .. ")"
  return hs
end
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = message(ready, message(stalled, "Stalled"))
  return hs
end
if ready ~= nil and ready.status == "False" and permanent[ready.reason] then
  hs.status = "Degraded"
  hs.message = message(ready, ready.reason)
  return hs
end
if reconciling ~= nil and reconciling.status == "True" then
  hs.message = message(ready, message(reconciling, "Reconciling"))
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = message(ready, "Ready")
  return hs
end
-- Ready missing, Unknown, or False with a reason the operator works its way out of.
if ready ~= nil then
  hs.message = message(ready, "Ready is " .. tostring(ready.status) .. " (" .. tostring(ready.reason) .. ")")
end
return hs
