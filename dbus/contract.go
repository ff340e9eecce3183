// Package syscarebus is syscare-helper's D-Bus contract: the names, the introspection XML
// (embedded), the Go type of every message, the one mapping from errors to bus error
// names, and a client; the helper's server, the syscare CLI and the tests all use it.
// Its files stay in dbus/ next to the bus configuration installed with the XML; the
// package is named syscarebus so that it never clashes with godbus's package dbus.
package syscarebus

import (
	_ "embed"
	"encoding/xml"
	"fmt"
)

// Names of the service.
const (
	BusName      = "org.openeuler.SysCare1"
	ObjectPath   = "/org/openeuler/SysCare1"
	Interface    = "org.openeuler.SysCare1.Manager"
	PolkitAction = "org.openeuler.syscare.manage"
	// SignalStateChanged is emitted with (uuid, name, old status, new status).
	SignalStateChanged = "StateChanged"
	// SignalProgress is emitted with (operation, entity name, done, total) while a user
	// patch goes into or out of many processes (see the XML for the rate).
	SignalProgress = "Progress"
)

// Status strings, printed exactly like upstream SysCare.
const (
	StatusNotApplied = "NOT-APPLIED"
	StatusDeactived  = "DEACTIVED"
	StatusActived    = "ACTIVED"
	StatusAccepted   = "ACCEPTED"
	// StatusBroken marks a List row for a patch directory that cannot be read.
	StatusBroken = "BROKEN"
)

// IntrospectXML is the contract: the introspection data of ObjectPath.
//
//go:embed org.openeuler.SysCare1.xml
var IntrospectXML string

// Method is one method of the contract with its argument signatures in order.
type Method struct {
	Name string
	In   []string
	Out  []string
}

type xmlMember struct {
	Name string `xml:"name,attr"`
	Args []struct {
		Type      string `xml:"type,attr"`
		Direction string `xml:"direction,attr"`
	} `xml:"arg"`
}

type xmlNode struct {
	Interfaces []struct {
		Name    string      `xml:"name,attr"`
		Methods []xmlMember `xml:"method"`
		Signals []xmlMember `xml:"signal"`
	} `xml:"interface"`
}

// Signals parses IntrospectXML and returns the signals of Interface, each with its
// argument signatures in Out (what the helper sends).
func Signals() ([]Method, error) {
	_, signals, err := members()
	return signals, err
}

// Methods parses IntrospectXML and returns the methods of Interface.
func Methods() ([]Method, error) {
	methods, _, err := members()
	return methods, err
}

// members parses IntrospectXML once for Methods and Signals: a signal's arguments all
// go out, a method's by their direction.
func members() (methods, signals []Method, err error) {
	var node xmlNode
	if err := xml.Unmarshal([]byte(IntrospectXML), &node); err != nil {
		return nil, nil, fmt.Errorf("introspection xml: %w", err)
	}
	for _, it := range node.Interfaces {
		if it.Name != Interface {
			continue
		}
		for _, m := range it.Methods {
			mm := Method{Name: m.Name}
			for _, a := range m.Args {
				if a.Direction == "out" {
					mm.Out = append(mm.Out, a.Type)
				} else {
					mm.In = append(mm.In, a.Type)
				}
			}
			methods = append(methods, mm)
		}
		for _, m := range it.Signals {
			sm := Method{Name: m.Name}
			for _, a := range m.Args {
				sm.Out = append(sm.Out, a.Type)
			}
			signals = append(signals, sm)
		}
		return methods, signals, nil
	}
	return nil, nil, fmt.Errorf("introspection xml: no interface %s", Interface)
}
