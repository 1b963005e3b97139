// Command attackexec plays a local attacker against the Workload API in
// the integration tests: a process connects, hands the connection to a
// child, and executes another program (a set-user-ID one, or one whose
// path is registered) hoping that the agent attests the connection as
// that program.
//
//	attackexec sleep                         sleep for a minute (the program exec'd into)
//	attackexec fetch SOCKET OUT              fetch an X.509-SVID over SOCKET, write the result to OUT
//	attackexec connect-exec SOCKET PROG OUT  connect, start a child that uses the connection, exec PROG
//
// Results are JSON: {"spiffe_id": "...", "error": "..."}.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
)

func main() {
	if len(os.Args) < 2 {
		fail("usage: attackexec sleep|fetch|connect-exec|use-conn ...")
	}
	switch os.Args[1] {
	case "sleep":
		time.Sleep(time.Minute)
	case "fetch":
		// attackexec fetch SOCKET OUT
		conn, err := net.Dial("unix", os.Args[2])
		if err != nil {
			fail(err.Error())
		}
		report(os.Args[3], conn)
	case "connect-exec":
		// attackexec connect-exec SOCKET PROG OUT
		connectExec(os.Args[2], os.Args[3], os.Args[4])
	case "use-conn":
		// attackexec use-conn OUT (connection on fd 3)
		useConn(os.Args[2])
	default:
		fail("unknown mode " + os.Args[1])
	}
}

func connectExec(socket, prog, out string) {
	conn, err := net.Dial("unix", socket)
	if err != nil {
		fail(err.Error())
	}
	f, err := conn.(*net.UnixConn).File()
	if err != nil {
		fail(err.Error())
	}
	// Let the agent accept the connection (and record this program)
	// before the exec, so that the attack tests the agent's check after
	// the handshake, not only at it.
	time.Sleep(300 * time.Millisecond)
	self, err := os.Executable()
	if err != nil {
		fail(err.Error())
	}
	child := exec.Command(self, "use-conn", out)
	child.ExtraFiles = []*os.File{f}
	child.Stderr = os.Stderr
	if err := child.Start(); err != nil {
		fail(err.Error())
	}
	err = syscall.Exec(prog, []string{prog, "sleep"}, os.Environ())
	fail("exec " + prog + ": " + err.Error())
}

func useConn(out string) {
	// Wait until the parent runs another program.
	parent := "/proc/" + strconv.Itoa(os.Getppid()) + "/exe"
	self, _ := os.Readlink("/proc/self/exe")
	deadline := time.Now().Add(10 * time.Second)
	for {
		if got, err := os.Readlink(parent); err != nil || got != self {
			break
		}
		if time.Now().After(deadline) {
			write(out, "", "parent did not exec")
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	conn, err := net.FileConn(os.NewFile(3, "conn"))
	if err != nil {
		write(out, "", err.Error())
		return
	}
	report(out, conn)
}

// report fetches an X.509-SVID with go-spiffe's client over conn and
// writes the result to out.
func report(out string, conn net.Conn) {
	used := false
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := workloadapi.New(ctx, workloadapi.WithAddr("unix:///attackexec"),
		workloadapi.WithDialOptions(grpc.WithContextDialer(func(context.Context, string) (net.Conn, error) {
			if used {
				return nil, fmt.Errorf("the connection is spent")
			}
			used = true
			return conn, nil
		})))
	if err != nil {
		write(out, "", err.Error())
		return
	}
	defer c.Close()
	svid, err := c.FetchX509SVID(ctx)
	if err != nil {
		write(out, "", err.Error())
		return
	}
	write(out, svid.ID.String(), "")
}

func write(out, id, errText string) {
	b, _ := json.Marshal(map[string]string{"spiffe_id": id, "error": errText})
	if err := os.WriteFile(out+".tmp", b, 0o644); err != nil {
		fail(err.Error())
	}
	if err := os.Rename(out+".tmp", out); err != nil {
		fail(err.Error())
	}
}

func fail(msg string) {
	fmt.Fprintln(os.Stderr, "attackexec:", msg)
	os.Exit(2)
}
