// Package wire encodes and decodes the few protobuf messages of x/gov and
// x/upgrade that invisor exchanges with a node over ABCI query: the plan in
// force, and the software-upgrade proposals in voting. It works by field number
// (google.golang.org/protobuf/encoding/protowire) instead of the SDK's generated
// types, so that the code every supported SDK line shares links no SDK. The
// field numbers are those of cosmos.gov.v1 and cosmos.upgrade.v1beta1, the same
// on SDK v0.53 and v0.55; the tests encode with the SDK's own types and decode
// here, so a drift would show.
//
// Decoding follows proto3: unknown fields are skipped, a known field with the
// wrong wire type is an error (as gogoproto's Unmarshal says "wrong wireType"),
// and the last value of a repeated scalar wins.
package wire

import (
	"errors"
	"fmt"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
)

// Plan is x/upgrade's cosmos.upgrade.v1beta1.Plan, without its deprecated time
// and upgraded client state.
type Plan struct {
	Name   string
	Height int64
	Info   string
}

// Any is google.protobuf.Any.
type Any struct {
	TypeURL string
	Value   []byte
}

// ProposalStatus is cosmos.gov.v1.ProposalStatus.
type ProposalStatus int32

// The values of cosmos.gov.v1.ProposalStatus.
const (
	StatusUnspecified   ProposalStatus = 0
	StatusDepositPeriod ProposalStatus = 1
	StatusVotingPeriod  ProposalStatus = 2
	StatusPassed        ProposalStatus = 3
	StatusRejected      ProposalStatus = 4
	StatusFailed        ProposalStatus = 5
)

// Proposal is the part of cosmos.gov.v1.Proposal invisor reads.
type Proposal struct {
	ID        uint64
	Messages  []Any
	Status    ProposalStatus
	VotingEnd time.Time // zero when the proposal has none (deposit period)
	Title     string
}

// Type URLs of the messages that schedule an upgrade.
const (
	TypeMsgSoftwareUpgrade = "/cosmos.upgrade.v1beta1.MsgSoftwareUpgrade"
	TypeExecLegacyContent  = "/cosmos.gov.v1.MsgExecLegacyContent"
	TypeLegacyProposal     = "/cosmos.upgrade.v1beta1.SoftwareUpgradeProposal"
)

// ABCI query paths of the gRPC methods invisor asks.
const (
	PathCurrentPlan = "/cosmos.upgrade.v1beta1.Query/CurrentPlan"
	PathProposals   = "/cosmos.gov.v1.Query/Proposals"
	PathProposal    = "/cosmos.gov.v1.Query/Proposal"
)

// ErrWireType is a known field sent with another wire type than its own.
var ErrWireType = errors.New("wrong wire type")

// EncodeProposalsRequest is cosmos.gov.v1.QueryProposalsRequest for the
// proposals in status, one page of at most limit from key on.
func EncodeProposalsRequest(status ProposalStatus, key []byte, limit uint64) []byte {
	var page []byte
	if len(key) > 0 {
		page = protowire.AppendTag(page, 1, protowire.BytesType)
		page = protowire.AppendBytes(page, key)
	}
	if limit > 0 {
		page = protowire.AppendTag(page, 3, protowire.VarintType)
		page = protowire.AppendVarint(page, limit)
	}
	var b []byte
	if status != StatusUnspecified {
		b = protowire.AppendTag(b, 1, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(status))
	}
	b = protowire.AppendTag(b, 4, protowire.BytesType)
	return protowire.AppendBytes(b, page)
}

// DecodeProposalsResponse decodes cosmos.gov.v1.QueryProposalsResponse: the
// proposals and the key of the next page (empty on the last page).
func DecodeProposalsResponse(b []byte) (props []Proposal, nextKey []byte, err error) {
	err = fields(b, "QueryProposalsResponse", func(f field) error {
		switch f.num {
		case 1:
			v, err := f.bytes()
			if err != nil {
				return err
			}
			p, err := DecodeProposal(v)
			if err != nil {
				return err
			}
			props = append(props, p)
		case 2:
			v, err := f.bytes()
			if err != nil {
				return err
			}
			return fields(v, "PageResponse", func(f field) error {
				if f.num == 1 {
					k, err := f.bytes()
					nextKey = append([]byte(nil), k...)
					return err
				}
				return nil
			})
		}
		return nil
	})
	return props, nextKey, err
}

// EncodeProposalRequest is cosmos.gov.v1.QueryProposalRequest for proposal id.
func EncodeProposalRequest(id uint64) []byte {
	b := protowire.AppendTag(nil, 1, protowire.VarintType)
	return protowire.AppendVarint(b, id)
}

// DecodeProposalResponse decodes cosmos.gov.v1.QueryProposalResponse (nil
// proposal when the answer holds none).
func DecodeProposalResponse(b []byte) (*Proposal, error) {
	var out *Proposal
	err := fields(b, "QueryProposalResponse", func(f field) error {
		if f.num != 1 {
			return nil
		}
		v, err := f.bytes()
		if err != nil {
			return err
		}
		p, err := DecodeProposal(v)
		out = &p
		return err
	})
	return out, err
}

// DecodeProposal decodes cosmos.gov.v1.Proposal.
func DecodeProposal(b []byte) (Proposal, error) {
	var p Proposal
	err := fields(b, "Proposal", func(f field) error {
		var err error
		switch f.num {
		case 1:
			p.ID, err = f.varint()
		case 2:
			var v []byte
			if v, err = f.bytes(); err == nil {
				var a Any
				a, err = DecodeAny(v)
				p.Messages = append(p.Messages, a)
			}
		case 3:
			var v uint64
			v, err = f.varint()
			p.Status = ProposalStatus(int32(v))
		case 9:
			var v []byte
			if v, err = f.bytes(); err == nil {
				p.VotingEnd, err = decodeTimestamp(v)
			}
		case 11:
			p.Title, err = f.string()
		}
		return err
	})
	return p, err
}

// DecodeAny decodes google.protobuf.Any.
func DecodeAny(b []byte) (Any, error) {
	var a Any
	err := fields(b, "Any", func(f field) error {
		var err error
		switch f.num {
		case 1:
			a.TypeURL, err = f.string()
		case 2:
			var v []byte
			v, err = f.bytes()
			a.Value = append([]byte(nil), v...)
		}
		return err
	})
	return a, err
}

// DecodeCurrentPlanResponse decodes cosmos.upgrade.v1beta1.QueryCurrentPlanResponse
// (nil when no plan is in force).
func DecodeCurrentPlanResponse(b []byte) (*Plan, error) {
	return embeddedPlan(b, "QueryCurrentPlanResponse", 1)
}

// DecodeMsgSoftwareUpgrade is the plan of cosmos.upgrade.v1beta1.MsgSoftwareUpgrade
// (nil when it carries none).
func DecodeMsgSoftwareUpgrade(b []byte) (*Plan, error) {
	return embeddedPlan(b, "MsgSoftwareUpgrade", 2)
}

// DecodeSoftwareUpgradeProposal is the plan of the legacy
// cosmos.upgrade.v1beta1.SoftwareUpgradeProposal content.
func DecodeSoftwareUpgradeProposal(b []byte) (*Plan, error) {
	return embeddedPlan(b, "SoftwareUpgradeProposal", 3)
}

// DecodeMsgExecLegacyContent is the content of cosmos.gov.v1.MsgExecLegacyContent
// (nil when it carries none).
func DecodeMsgExecLegacyContent(b []byte) (*Any, error) {
	var out *Any
	err := fields(b, "MsgExecLegacyContent", func(f field) error {
		if f.num != 1 {
			return nil
		}
		v, err := f.bytes()
		if err != nil {
			return err
		}
		a, err := DecodeAny(v)
		out = &a
		return err
	})
	return out, err
}

// DecodePlan decodes cosmos.upgrade.v1beta1.Plan.
func DecodePlan(b []byte) (Plan, error) {
	var p Plan
	err := fields(b, "Plan", func(f field) error {
		var err error
		switch f.num {
		case 1:
			p.Name, err = f.string()
		case 3:
			var v uint64
			v, err = f.varint()
			p.Height = int64(v)
		case 4:
			p.Info, err = f.string()
		}
		return err
	})
	return p, err
}

// embeddedPlan decodes the Plan at field num of message what.
func embeddedPlan(b []byte, what string, num protowire.Number) (*Plan, error) {
	var out *Plan
	err := fields(b, what, func(f field) error {
		if f.num != num {
			return nil
		}
		v, err := f.bytes()
		if err != nil {
			return err
		}
		p, err := DecodePlan(v)
		out = &p
		return err
	})
	return out, err
}

// decodeTimestamp decodes google.protobuf.Timestamp into UTC.
func decodeTimestamp(b []byte) (time.Time, error) {
	var sec, nsec int64
	err := fields(b, "Timestamp", func(f field) error {
		v, err := f.varint()
		switch f.num {
		case 1:
			sec = int64(v)
		case 2:
			nsec = int64(int32(v))
		default:
			return nil
		}
		return err
	})
	if err != nil {
		return time.Time{}, err
	}
	if nsec < 0 || nsec >= 1e9 {
		return time.Time{}, fmt.Errorf("timestamp: nanos %d out of range", nsec)
	}
	return time.Unix(sec, nsec).UTC(), nil
}

// field is one field of a message as read off the wire.
type field struct {
	msg string
	num protowire.Number
	typ protowire.Type
	u   uint64 // varint value
	b   []byte // bytes value
}

func (f field) varint() (uint64, error) {
	if f.typ != protowire.VarintType {
		return 0, fmt.Errorf("%s field %d: %w %d, want varint", f.msg, f.num, ErrWireType, f.typ)
	}
	return f.u, nil
}

func (f field) bytes() ([]byte, error) {
	if f.typ != protowire.BytesType {
		return nil, fmt.Errorf("%s field %d: %w %d, want length-delimited", f.msg, f.num, ErrWireType, f.typ)
	}
	return f.b, nil
}

func (f field) string() (string, error) {
	b, err := f.bytes()
	return string(b), err
}

// fields calls each with every field of message b (named what in errors), in
// wire order. Values of other wire types than varint and bytes are consumed and
// passed without a value: a known field asks for its type and gets ErrWireType.
// The wire format is read as the SDK's generated code (gogoproto) reads it,
// which is laxer than protowire's Consume functions (a tag's field number is
// the int32 of the varint's rest, a varint's bits beyond 64 are dropped): what
// the SDK accepts, this accepts too.
func fields(b []byte, what string, each func(field) error) error {
	for len(b) > 0 {
		num, typ, n := consumeTag(b)
		if n < 0 {
			return fmt.Errorf("%s: %w", what, errMalformed)
		}
		b = b[n:]
		f := field{msg: what, num: num, typ: typ}
		switch typ {
		case protowire.VarintType:
			f.u, n = consumeVarint(b)
		case protowire.BytesType:
			f.b, n = consumeBytes(b)
		case protowire.StartGroupType:
			n = skipGroup(b)
		case protowire.Fixed32Type, protowire.Fixed64Type:
			n = consumeFixed(typ, b)
		default: // an end of group that did not start, or wire type 6 or 7
			return fmt.Errorf("%s field %d: unexpected wire type %d", what, num, typ)
		}
		if n < 0 {
			return fmt.Errorf("%s field %d: %w", what, num, errMalformed)
		}
		b = b[n:]
		if err := each(f); err != nil {
			return err
		}
	}
	return nil
}

// errMalformed is bytes that are no protobuf message (truncated, or a varint
// longer than 64 bits).
var errMalformed = errors.New("malformed protobuf (truncated, or a varint too long)")

// consumeVarint reads a varint as gogoproto's generated Unmarshal does: at
// most 64 bits of shift, the bits beyond 64 dropped. It returns -1 for bytes
// that hold none.
func consumeVarint(b []byte) (uint64, int) {
	var v uint64
	for i, shift := 0, uint(0); ; i, shift = i+1, shift+7 {
		if shift >= 64 || i >= len(b) {
			return 0, -1
		}
		c := b[i]
		v |= uint64(c&0x7f) << shift
		if c < 0x80 {
			return v, i + 1
		}
	}
}

// consumeTag reads a field's tag as gogoproto does: the varint's low 3 bits are
// the wire type, its rest as an int32 the field number, which must be above 0.
func consumeTag(b []byte) (protowire.Number, protowire.Type, int) {
	v, n := consumeVarint(b)
	if n < 0 {
		return 0, 0, n
	}
	num := int32(v >> 3)
	if num <= 0 {
		return 0, 0, -1
	}
	return protowire.Number(num), protowire.Type(v & 7), n
}

// consumeBytes reads a length-delimited value.
func consumeBytes(b []byte) ([]byte, int) {
	l, n := consumeVarint(b)
	if n < 0 || int(l) < 0 || uint64(len(b)-n) < l {
		return nil, -1
	}
	end := n + int(l)
	return b[n:end], end
}

// consumeFixed reads a fixed32 or fixed64 value and returns its length.
func consumeFixed(typ protowire.Type, b []byte) int {
	size := 4
	if typ == protowire.Fixed64Type {
		size = 8
	}
	if len(b) < size {
		return -1
	}
	return size
}

// skipGroup consumes the rest of a group whose start tag was just read, as the
// SDK's generated code skips one: up to the end tag that closes it, reading
// the tags inside for their wire type only (their field numbers, 0 included,
// are not checked there). It returns the bytes consumed, or -1.
func skipGroup(b []byte) int {
	depth, used := 1, 0
	for depth > 0 {
		v, n := consumeVarint(b[used:])
		if n < 0 {
			return n
		}
		used += n
		switch typ := protowire.Type(v & 7); typ {
		case protowire.StartGroupType:
			depth++
			continue
		case protowire.EndGroupType:
			depth--
			continue
		case protowire.VarintType:
			_, n = consumeVarint(b[used:])
		case protowire.BytesType:
			_, n = consumeBytes(b[used:])
		case protowire.Fixed32Type, protowire.Fixed64Type:
			n = consumeFixed(typ, b[used:])
		default:
			return -1
		}
		if n < 0 {
			return n
		}
		used += n
	}
	return used
}
