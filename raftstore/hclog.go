package raftstore

import (
	"fmt"
	"io"
	"log"
	"sync/atomic"

	"github.com/hashicorp/go-hclog"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// zapHCLog adapts a zap.Logger to hclog.Logger so Raft's logs go through
// Sigil's logger at the matching level (hclog Trace and Debug map to zap
// Debug).
type zapHCLog struct {
	z       *zap.Logger
	name    string
	implied []interface{}
	level   *atomic.Int32 // hclog.Level; shared with sub-loggers
}

var _ hclog.Logger = (*zapHCLog)(nil)

func newZapHCLog(z *zap.Logger, name string) *zapHCLog {
	lv := new(atomic.Int32)
	lv.Store(int32(hclog.Trace))
	return &zapHCLog{z: z.Named(name).WithOptions(zap.AddCallerSkip(2)), name: name, level: lv}
}

func zapLevel(l hclog.Level) zapcore.Level {
	switch l {
	case hclog.Trace, hclog.Debug:
		return zapcore.DebugLevel
	case hclog.Warn:
		return zapcore.WarnLevel
	case hclog.Error:
		return zapcore.ErrorLevel
	default:
		return zapcore.InfoLevel
	}
}

func fields(args []interface{}) []zap.Field {
	out := make([]zap.Field, 0, (len(args)+1)/2)
	for i := 0; i < len(args); i += 2 {
		if i+1 == len(args) {
			out = append(out, zap.Any(hclog.MissingKey, args[i]))
			break
		}
		key, ok := args[i].(string)
		if !ok {
			key = fmt.Sprint(args[i])
		}
		if err, ok := args[i+1].(error); ok {
			out = append(out, zap.NamedError(key, err))
			continue
		}
		if f, ok := args[i+1].(hclog.Format); ok && len(f) > 0 {
			if format, ok := f[0].(string); ok {
				out = append(out, zap.String(key, fmt.Sprintf(format, f[1:]...)))
				continue
			}
		}
		out = append(out, zap.Any(key, args[i+1]))
	}
	return out
}

func (l *zapHCLog) enabled(level hclog.Level) bool {
	if level == hclog.Off || level < hclog.Level(l.level.Load()) {
		return false
	}
	return l.z.Core().Enabled(zapLevel(level))
}

func (l *zapHCLog) emit(level hclog.Level, msg string, args []interface{}) {
	if level == hclog.NoLevel {
		level = hclog.Info
	}
	if !l.enabled(level) {
		return
	}
	if ce := l.z.Check(zapLevel(level), msg); ce != nil {
		ce.Write(fields(append(append([]interface{}{}, l.implied...), args...))...)
	}
}

func (l *zapHCLog) Log(level hclog.Level, msg string, args ...interface{}) { l.emit(level, msg, args) }
func (l *zapHCLog) Trace(msg string, args ...interface{})                  { l.emit(hclog.Trace, msg, args) }
func (l *zapHCLog) Debug(msg string, args ...interface{})                  { l.emit(hclog.Debug, msg, args) }
func (l *zapHCLog) Info(msg string, args ...interface{})                   { l.emit(hclog.Info, msg, args) }
func (l *zapHCLog) Warn(msg string, args ...interface{})                   { l.emit(hclog.Warn, msg, args) }
func (l *zapHCLog) Error(msg string, args ...interface{})                  { l.emit(hclog.Error, msg, args) }

func (l *zapHCLog) IsTrace() bool { return l.enabled(hclog.Trace) }
func (l *zapHCLog) IsDebug() bool { return l.enabled(hclog.Debug) }
func (l *zapHCLog) IsInfo() bool  { return l.enabled(hclog.Info) }
func (l *zapHCLog) IsWarn() bool  { return l.enabled(hclog.Warn) }
func (l *zapHCLog) IsError() bool { return l.enabled(hclog.Error) }

func (l *zapHCLog) ImpliedArgs() []interface{} { return l.implied }

func (l *zapHCLog) With(args ...interface{}) hclog.Logger {
	c := *l
	c.implied = append(append([]interface{}{}, l.implied...), args...)
	return &c
}

func (l *zapHCLog) Name() string { return l.name }

func (l *zapHCLog) Named(name string) hclog.Logger {
	c := *l
	c.z = l.z.Named(name)
	if l.name != "" {
		c.name = l.name + "." + name
	} else {
		c.name = name
	}
	return &c
}

func (l *zapHCLog) ResetNamed(name string) hclog.Logger {
	// zap cannot drop a name; keep the zap name and record the new one.
	c := *l
	c.name = name
	return &c
}

func (l *zapHCLog) SetLevel(level hclog.Level) { l.level.Store(int32(level)) }
func (l *zapHCLog) GetLevel() hclog.Level      { return hclog.Level(l.level.Load()) }

func (l *zapHCLog) StandardLogger(*hclog.StandardLoggerOptions) *log.Logger {
	return zap.NewStdLog(l.z.WithOptions(zap.AddCallerSkip(-2)))
}

func (l *zapHCLog) StandardWriter(opts *hclog.StandardLoggerOptions) io.Writer {
	return l.StandardLogger(opts).Writer()
}
