-- Argo CD health check for sluice.dev/TransferUser
-- (argocd-cm key resource.customizations.health.sluice.dev_TransferUser).
-- Lua 5.1, as Argo CD runs it (gopher-lua). Reads what the operator writes: status.observedGeneration
-- and Ready (its Stalled and Reconciling are for kstatus). docs/gitops.md gives the mapping and why.
local hs = { status = "Progressing", message = "Waiting for the operator to write a status" }

-- Ready=False reasons that only a change to the object, its Secret or the server fixes. The
-- operator's refusals are final for the object as it is; a Degraded resource fails an Argo CD
-- sync that waits on it, so only these are Degraded.
local degraded = {
  InvalidSpec = true,             -- a field the operator refuses; the message names it
  PasswordPolicyViolation = true, -- the Secret's password breaks the server's policy
  PasswordExpired = true,         -- older than the server's maxAgeDays: password logins refused
  SecretNotMarked = true,         -- the Secret lacks the label sluice.dev/referable=true
  SecretKeyMissing = true,        -- the Secret exists but has no such key
  DuplicateUsername = true,       -- an older TransferUser has the username
  Expired = true,                 -- spec.expiresAt has passed
  UsersNotApplied = true,         -- the server's users Secret was refused (server is Stalled)
  NotSupportedOnObjectStorage = true, -- quota or retention on a server whose homes are in a bucket
}
-- spec.disabled: no logins, on purpose.
local suspended = { Disabled = true }
-- Any other Ready=False reason is Progressing: SecretNotFound (SealedSecrets or External Secrets
-- create it after the sync), ServerNotFound (the server comes in the same sync), HashingFailed
-- (retried), WaitingForPods (the pods load the new users.yaml within about a minute).

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

if obj.status == nil then
  return hs
end
local ready = condition("Ready")
local generation = obj.metadata.generation
local observed = obj.status.observedGeneration

if generation ~= nil and (observed == nil or observed < generation) then
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation) ..
    " (the status is of generation " .. tostring(observed) .. ")"
  return hs
end
if ready == nil then
  return hs
end
hs.message = ready.message or ""
if hs.message == "" then
  hs.message = "Ready is " .. tostring(ready.status) .. " (" .. tostring(ready.reason) .. ")"
end
if ready.status == "True" then
  hs.status = "Healthy"
elseif ready.status == "False" and degraded[ready.reason] then
  hs.status = "Degraded"
elseif ready.status == "False" and suspended[ready.reason] then
  hs.status = "Suspended"
end
return hs
