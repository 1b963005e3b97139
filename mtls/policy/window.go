package policy

import (
	"fmt"
	"strings"
	"time"
)

// timeWindow is a compiled recurring window: on the given weekdays,
// from start to end minutes after midnight in loc.
type timeWindow struct {
	days       uint8 // bit i set: time.Weekday(i) included
	start, end int   // minutes, 0..1440
	loc        *time.Location
	text       string
}

var dayNames = map[string]time.Weekday{
	"sun": time.Sunday, "mon": time.Monday, "tue": time.Tuesday, "wed": time.Wednesday,
	"thu": time.Thursday, "fri": time.Friday, "sat": time.Saturday,
}

func compileWindow(ws TimeWindowSpec) (timeWindow, error) {
	w := timeWindow{start: 0, end: 24 * 60, loc: time.UTC}
	for _, d := range ws.Days {
		wd, ok := dayNames[strings.ToLower(strings.TrimSpace(d))]
		if !ok {
			return w, fmt.Errorf("day %q: want mon, tue, wed, thu, fri, sat or sun", d)
		}
		w.days |= 1 << wd
	}
	if w.days == 0 {
		w.days = 0x7f
	}
	var err error
	if ws.Start != "" {
		if w.start, err = parseClock(ws.Start); err != nil {
			return w, fmt.Errorf("start: %v", err)
		}
	}
	if ws.End != "" {
		if w.end, err = parseClock(ws.End); err != nil {
			return w, fmt.Errorf("end: %v", err)
		}
	}
	if w.start == w.end {
		return w, fmt.Errorf("start and end are both %s: the window is empty", ws.Start)
	}
	if ws.Timezone != "" {
		if w.loc, err = time.LoadLocation(ws.Timezone); err != nil {
			return w, fmt.Errorf("timezone %q: %v", ws.Timezone, err)
		}
	}
	days := "every day"
	if len(ws.Days) > 0 {
		days = strings.Join(ws.Days, ",")
	}
	w.text = fmt.Sprintf("%s %02d:%02d-%02d:%02d %s", days, w.start/60, w.start%60, w.end/60, w.end%60, w.loc)
	return w, nil
}

// parseClock parses "HH:MM" (00:00 to 24:00) into minutes.
func parseClock(s string) (int, error) {
	var h, m int
	if n, err := fmt.Sscanf(s, "%d:%d", &h, &m); n != 2 || err != nil || len(s) != 5 {
		return 0, fmt.Errorf("%q: want HH:MM", s)
	}
	if h < 0 || h > 24 || m < 0 || m > 59 || (h == 24 && m != 0) {
		return 0, fmt.Errorf("%q: want a time from 00:00 to 24:00", s)
	}
	return h*60 + m, nil
}

func (w *timeWindow) contains(now time.Time) bool {
	t := now.In(w.loc)
	min := t.Hour()*60 + t.Minute()
	day := t.Weekday()
	if w.start < w.end {
		return w.days&(1<<day) != 0 && min >= w.start && min < w.end
	}
	// Spans midnight: the evening part belongs to today, the morning part
	// to the window that started yesterday.
	if min >= w.start {
		return w.days&(1<<day) != 0
	}
	if min < w.end {
		return w.days&(1<<((day+6)%7)) != 0
	}
	return false
}

func (w timeWindow) String() string { return w.text }
