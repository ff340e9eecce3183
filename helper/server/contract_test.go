package server

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	godbus "github.com/godbus/dbus/v5"

	"github.com/syscare/syscare/dbus"
	"github.com/syscare/syscare/helper/manager"
)

// TestContract holds the exported Object against dbus/org.openeuler.SysCare1.xml: the same
// methods with the same argument signatures, in both directions.
func TestContract(t *testing.T) {
	want, err := syscarebus.Methods()
	if err != nil {
		t.Fatal(err)
	}
	senderT := reflect.TypeOf(godbus.Sender(""))
	errT := reflect.TypeOf((*godbus.Error)(nil))
	got := map[string]syscarebus.Method{}
	typ := reflect.TypeOf(&Object{})
	for i := 0; i < typ.NumMethod(); i++ {
		m := typ.Method(i)
		gm := syscarebus.Method{Name: m.Name}
		for j := 1; j < m.Type.NumIn(); j++ {
			if in := m.Type.In(j); in != senderT {
				gm.In = append(gm.In, godbus.SignatureOfType(in).String())
			}
		}
		for j := 0; j < m.Type.NumOut(); j++ {
			if out := m.Type.Out(j); out != errT {
				gm.Out = append(gm.Out, godbus.SignatureOfType(out).String())
			} else if j != m.Type.NumOut()-1 {
				t.Errorf("%s: *dbus.Error must be the last result", m.Name)
			}
		}
		got[m.Name] = gm
	}
	for _, w := range want {
		g, ok := got[w.Name]
		if !ok {
			t.Errorf("method %s is in the XML but not exported", w.Name)
			continue
		}
		if !slices.Equal(g.In, w.In) || !slices.Equal(g.Out, w.Out) {
			t.Errorf("method %s: exported (%v) -> (%v), XML (%v) -> (%v)", w.Name, g.In, g.Out, w.In, w.Out)
		}
		delete(got, w.Name)
	}
	for name := range got {
		t.Errorf("method %s is exported but not in the XML", name)
	}
}

func TestErrorNames(t *testing.T) {
	if e := syscarebus.BusError(syscarebus.ErrAccessDenied); e.Name != syscarebus.ErrorAccessDenied {
		t.Errorf("access denied maps to %s", e.Name)
	}
	// An engine's failure reaches the bus under the kind the manager's adapter gave it,
	// through any wrapping; an error of no kind is Failed.
	for err, want := range map[error]string{
		fmt.Errorf("apply x: %w", fmt.Errorf("%w: %w", manager.ErrBusy, errors.New("function busy"))): syscarebus.ErrorBusy,
		fmt.Errorf("%w: build-id", manager.ErrVerify):                                                 syscarebus.ErrorVerificationFailed,
		errors.Join(fmt.Errorf("%w: x", manager.ErrConflict), errors.New("rollback")):                 syscarebus.ErrorConflict,
		errors.New("disk full"): syscarebus.ErrorFailed,
	} {
		if e := syscarebus.BusError(err); e.Name != want || e.Body[0] != err.Error() {
			t.Errorf("%v maps to %s %v, want %s with the error text", err, e.Name, e.Body, want)
		}
	}
}

// TestUpgradeOptions: the known options are read, anything else is refused.
func TestUpgradeOptions(t *testing.T) {
	uo, _, err := readUpgradeOptions(map[string]godbus.Variant{"accept": godbus.MakeVariant(true), "force": godbus.MakeVariant(false)})
	if err != nil || !uo.Accept || uo.Force {
		t.Fatalf("accept+force: %+v %v", uo, err)
	}
	uo, _, err = readUpgradeOptions(map[string]godbus.Variant{"health": godbus.MakeVariant([]string{"redis-cli -p 6380 ping"}),
		"target_health": godbus.MakeVariant(map[string][]string{"nginx": {"curl -fs http://localhost/"}}),
		"soak_ms":       godbus.MakeVariant(int32(30000)), "interval_ms": godbus.MakeVariant(uint64(2000)),
		"check_timeout_ms": godbus.MakeVariant(int64(500)), "supersede": godbus.MakeVariant(false)})
	if err != nil || !uo.NoSupersede || uo.Health.Soak != 30*time.Second || uo.Health.Interval != 2*time.Second ||
		len(uo.Health.Checks) != 1 || strings.Join(uo.Health.Checks[0].Argv, ",") != "redis-cli,-p,6380,ping" ||
		uo.Health.Checks[0].Timeout != 500*time.Millisecond || uo.Health.ByTarget["nginx"][0].Argv[0] != "curl" {
		t.Fatalf("health gate options: %+v %v", uo, err)
	}
	for _, bad := range []map[string]godbus.Variant{{"acept": godbus.MakeVariant(true)}, {"accept": godbus.MakeVariant("yes")},
		{"health": godbus.MakeVariant("true")}, {"health": godbus.MakeVariant([]string{"echo 'x"})},
		{"soak_ms": godbus.MakeVariant(int32(-1))}, {"soak_ms": godbus.MakeVariant("30s")}} {
		if _, _, err := readUpgradeOptions(bad); !errors.Is(err, syscarebus.ErrNotSupported) {
			t.Errorf("%v: %v, want refused", bad, err)
		}
	}
}
