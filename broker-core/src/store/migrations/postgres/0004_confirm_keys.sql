-- A device's confirmation key: the ed25519 public key (hex) it signs sensitive requests with
-- (revoking another device, minting a login token, approving a device). Devices signed in before it existed have
-- none and must sign in again for those requests. A device code keeps the key its request named
-- until the token poll names its own.
ALTER TABLE devices ADD COLUMN confirm_key TEXT;
ALTER TABLE device_codes ADD COLUMN confirm_key TEXT;
