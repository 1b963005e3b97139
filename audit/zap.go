package audit

import (
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Zap is the default sink: it writes each event as one log record of
// log. The record's message is Event.Message (What when empty), and its
// fields are, in order:
//
//	audit    string  Event.What
//	who      string  Event.Who, when set
//	subject  string  Event.Subject, when set
//	outcome  string  Event.Outcome ("success" when empty)
//	...      Event.Fields, each with the zap type of its Go type
//
// Successes are logged at Info, denials at Warn, failures at Error.
type Zap struct {
	log *zap.Logger
}

// NewZap returns the sink that writes to log.
func NewZap(log *zap.Logger) *Zap { return &Zap{log: log} }

// Audit writes ev.
func (z *Zap) Audit(ev Event) {
	outcome := ev.Outcome
	if outcome == "" {
		outcome = Success
	}
	level := zapcore.InfoLevel
	switch outcome {
	case Denied:
		level = zapcore.WarnLevel
	case Failure:
		level = zapcore.ErrorLevel
	}
	msg := ev.Message
	if msg == "" {
		msg = ev.What
	}
	ce := z.log.Check(level, msg)
	if ce == nil {
		return
	}
	fields := make([]zap.Field, 0, 4+len(ev.Fields))
	fields = append(fields, zap.String("audit", ev.What))
	if ev.Who != "" {
		fields = append(fields, zap.String("who", ev.Who))
	}
	if ev.Subject != "" {
		fields = append(fields, zap.String("subject", ev.Subject))
	}
	fields = append(fields, zap.String("outcome", string(outcome)))
	for _, f := range ev.Fields {
		fields = append(fields, zapField(f))
	}
	ce.Write(fields...)
}

func zapField(f Field) zap.Field {
	switch v := f.Value.(type) {
	case string:
		return zap.String(f.Key, v)
	case []string:
		return zap.Strings(f.Key, v)
	case int:
		return zap.Int(f.Key, v)
	case int64:
		return zap.Int64(f.Key, v)
	case uint64:
		return zap.Uint64(f.Key, v)
	case bool:
		return zap.Bool(f.Key, v)
	case time.Time:
		return zap.Time(f.Key, v)
	case time.Duration:
		return zap.Duration(f.Key, v)
	case error:
		return zap.NamedError(f.Key, v)
	default:
		return zap.Any(f.Key, v)
	}
}
