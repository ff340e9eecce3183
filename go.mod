module github.com/syscare/syscare

go 1.25.0

require (
	github.com/cavaliergopher/rpm v1.3.0
	github.com/cilium/ebpf v0.22.0
	github.com/godbus/dbus/v5 v5.2.4
	github.com/klauspost/compress v1.20.3
	github.com/sirupsen/logrus v1.10.2
	github.com/ulikunitz/xz v0.5.17
	golang.org/x/arch v0.30.0
	golang.org/x/sys v0.47.0
)

require golang.org/x/crypto v0.6.0 // indirect
