-- Runs an Argo CD health script the way Argo CD runs one from argocd-cm: `obj` set as a global,
-- only the libraries Argo CD opens for such scripts (base, table, a safe os; no string, math or
-- io, and no string methods), and the table the script returns read as hs.status/hs.message.
-- Usage: lua5.1 harness.lua SCRIPT < object-as-a-Lua-table-literal
-- Prints the status on the first line and the message after it.
local script_path = arg[1]
local write, format, getmetatable = io.write, string.format, getmetatable

local data = assert(loadstring("return " .. io.read("*a"), "=obj"))
setfenv(data, {})
local object = data()

local script = assert(loadfile(script_path))
local env = {
  obj = object,
  assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs, pcall = pcall,
  rawequal = rawequal, rawget = rawget, rawset = rawset, select = select, tonumber = tonumber,
  tostring = tostring, type = type, unpack = unpack, xpcall = xpcall,
  getmetatable = getmetatable, setmetatable = setmetatable, _VERSION = _VERSION,
  table = table,
  os = { clock = os.clock, date = os.date, difftime = os.difftime, time = os.time },
}
env._G = env
setfenv(script, env)

-- gopher-lua without its string library gives strings no methods ("x"):match(...) fails.
local string_meta = getmetatable("")
local string_index = string_meta.__index
string_meta.__index = nil
local ok, hs = pcall(script)
string_meta.__index = string_index
if not ok then
  io.stderr:write("health script failed: " .. tostring(hs) .. "\n")
  os.exit(3)
end
if type(hs) ~= "table" then
  io.stderr:write("health script returned " .. type(hs) .. ", not a table\n")
  os.exit(3)
end
write(tostring(hs.status), "\n", tostring(hs.message or ""))
