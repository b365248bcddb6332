package gpupassv1

// DeviceStatusName is the name a device status has in reports, JSON and tables (the
// contract of DESIGN.md): ok, missing, denied, no-driver, not-char-device, wrong-device.
func DeviceStatusName(s DeviceStatus) string {
	switch s {
	case DeviceStatus_DEVICE_STATUS_OK:
		return "ok"
	case DeviceStatus_DEVICE_STATUS_MISSING:
		return "missing"
	case DeviceStatus_DEVICE_STATUS_DENIED:
		return "denied"
	case DeviceStatus_DEVICE_STATUS_NO_DRIVER:
		return "no-driver"
	case DeviceStatus_DEVICE_STATUS_NOT_CHAR_DEVICE:
		return "not-char-device"
	case DeviceStatus_DEVICE_STATUS_WRONG_DEVICE:
		return "wrong-device"
	}
	return "unknown"
}

// Container states, the values of ContainerStatus.state (and of the JSON contract).
const (
	StateReady       = "ready"
	StatePending     = "pending"
	StateNotReady    = "not-ready"
	StateStopped     = "stopped"
	StateUnreachable = "unreachable"
	StateError       = "error"
)
