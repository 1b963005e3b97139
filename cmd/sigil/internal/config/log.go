package config

import (
	"fmt"
	"io"
	"os"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

func parseLevel(s string) (zapcore.Level, error) {
	switch s {
	case "", "info":
		return zapcore.InfoLevel, nil
	case "debug":
		return zapcore.DebugLevel, nil
	case "warn", "warning":
		return zapcore.WarnLevel, nil
	case "error":
		return zapcore.ErrorLevel, nil
	}
	return 0, fmt.Errorf("log_level %q is invalid: want debug, info, warn or error", s)
}

// consoleTimeLayout is the console format's timestamp: date, time and
// zone always, so that a time in a message (a certificate's expiry) and
// the time of the line can be told apart from another day's.
const consoleTimeLayout = "2006-01-02T15:04:05.000Z07:00"

// NewLogger builds the process logger writing to w (os.Stderr when nil).
// defaultFormat applies when l.Format is empty: the daemons log JSON,
// `sigil dev` logs for a terminal.
func NewLogger(l Log, defaultFormat string, w io.Writer) (*zap.Logger, error) {
	level, err := parseLevel(l.Level)
	if err != nil {
		return nil, err
	}
	format := l.Format
	if format == "" {
		format = defaultFormat
	}
	if w == nil {
		w = os.Stderr
	}
	var enc zapcore.Encoder
	switch format {
	case "json", "":
		ec := zap.NewProductionEncoderConfig()
		ec.TimeKey = "time"
		ec.EncodeTime = zapcore.RFC3339NanoTimeEncoder
		enc = zapcore.NewJSONEncoder(ec)
	case "console", "text":
		ec := zap.NewDevelopmentEncoderConfig()
		ec.EncodeTime = zapcore.TimeEncoderOfLayout(consoleTimeLayout)
		enc = zapcore.NewConsoleEncoder(ec)
	default:
		return nil, fmt.Errorf("log_format %q is invalid: want json or console", format)
	}
	core := zapcore.NewCore(enc, zapcore.Lock(zapcore.AddSync(w)), level)
	return zap.New(core, zap.ErrorOutput(zapcore.Lock(zapcore.AddSync(w)))), nil
}
