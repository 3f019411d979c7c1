// The Go clients of the client matrix: github.com/jlaffaye/ftp (explicit FTPS) and
// github.com/pkg/sftp over golang.org/x/crypto/ssh, driven as a Go integration would drive them.
// Contract (the same for every helper): tests/clients/README.md.
//
//	matrix ftps explicit | sftp password|key
package main

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/jlaffaye/ftp"
	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

func env(name string) string {
	value, ok := os.LookupEnv(name)
	if !ok {
		fail(fmt.Errorf("missing %s", name))
	}
	return value
}

func fail(err error) {
	fmt.Println("error:", err)
	os.Exit(1)
}

func check(err error, what string) {
	if err != nil {
		fail(fmt.Errorf("%s: %w", what, err))
	}
}

func digest(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

func main() {
	payload, err := os.ReadFile(env("MATRIX_PAYLOAD"))
	check(err, "payload")
	offset, err := strconv.Atoi(env("MATRIX_RESUME_OFFSET"))
	check(err, "MATRIX_RESUME_OFFSET")
	address := net.JoinHostPort(env("MATRIX_HOST"), env("MATRIX_PORT"))
	switch os.Args[1] {
	case "ftps":
		ftps(address, payload, offset)
	case "sftp":
		sftpClient(address, os.Args[2] == "key", payload, offset)
	}
	fmt.Println("done")
}

func ftps(address string, payload []byte, offset int) {
	pem, err := os.ReadFile(env("MATRIX_CA"))
	check(err, "ca")
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	config := &tls.Config{
		RootCAs:    roots,
		ServerName: env("MATRIX_HOST"),
		// Resumes the control connection's session on data connections (keyed by ServerName),
		// which RFC 4217 servers that bind the channels require.
		ClientSessionCache: tls.NewLRUClientSessionCache(8),
	}
	conn, err := ftp.Dial(address, ftp.DialWithExplicitTLS(config), ftp.DialWithTimeout(15*time.Second))
	check(err, "connect")
	defer conn.Quit()
	check(conn.Login(env("MATRIX_USER"), env("MATRIX_PASSWORD")), "login")
	fmt.Println("login ok")
	remote := env("MATRIX_REMOTE")
	check(conn.Stor(remote, bytes.NewReader(payload)), "upload")
	fmt.Println("upload ok")
	entries, err := conn.List("")
	check(err, "list")
	listed := false
	for _, entry := range entries {
		if entry.Name == remote && entry.Size == uint64(len(payload)) {
			listed = true
		}
	}
	if !listed {
		fail(fmt.Errorf("listing lacks %s with %d bytes", remote, len(payload)))
	}
	fmt.Println("listed", remote, len(payload))
	response, err := conn.Retr(remote)
	check(err, "download")
	data, err := io.ReadAll(response)
	check(err, "download")
	check(response.Close(), "download end")
	fmt.Println("sha256", digest(data))
	response, err = conn.RetrFrom(remote, uint64(offset))
	check(err, "resumed download")
	tail, err := io.ReadAll(response)
	check(err, "resumed download")
	check(response.Close(), "resumed download end")
	if !bytes.Equal(tail, payload[offset:]) {
		fail(fmt.Errorf("resumed download differs"))
	}
	fmt.Println("resume ok")
}

func sftpClient(address string, key bool, payload []byte, offset int) {
	hostKeys, err := knownhosts.New(env("MATRIX_KNOWN_HOSTS"))
	check(err, "known_hosts")
	config := &ssh.ClientConfig{
		User:            env("MATRIX_USER"),
		HostKeyCallback: hostKeys,
		Timeout:         15 * time.Second,
	}
	if key {
		pem, err := os.ReadFile(env("MATRIX_KEY"))
		check(err, "key")
		signer, err := ssh.ParsePrivateKey(pem)
		check(err, "key")
		config.Auth = []ssh.AuthMethod{ssh.PublicKeys(signer)}
	} else {
		config.Auth = []ssh.AuthMethod{ssh.Password(env("MATRIX_PASSWORD"))}
	}
	client, err := ssh.Dial("tcp", address, config)
	check(err, "connect")
	defer client.Close()
	fmt.Println("login ok")
	session, err := sftp.NewClient(client)
	check(err, "sftp subsystem")
	defer session.Close()
	remote := env("MATRIX_REMOTE")
	file, err := session.Create(remote)
	check(err, "upload")
	_, err = file.ReadFrom(bytes.NewReader(payload))
	check(err, "upload")
	check(file.Close(), "upload close")
	fmt.Println("upload ok")
	entries, err := session.ReadDir(".")
	check(err, "list")
	listed := false
	for _, entry := range entries {
		if entry.Name() == remote && entry.Size() == int64(len(payload)) {
			listed = true
		}
	}
	if !listed {
		fail(fmt.Errorf("listing lacks %s with %d bytes", remote, len(payload)))
	}
	fmt.Println("listed", remote, len(payload))
	file, err = session.Open(remote)
	check(err, "download")
	var data bytes.Buffer
	_, err = file.WriteTo(&data)
	check(err, "download")
	check(file.Close(), "download close")
	fmt.Println("sha256", digest(data.Bytes()))
	file, err = session.Open(remote)
	check(err, "resumed download")
	_, err = file.Seek(int64(offset), io.SeekStart)
	check(err, "resumed download seek")
	tail, err := io.ReadAll(file)
	check(err, "resumed download")
	check(file.Close(), "resumed download close")
	if !bytes.Equal(tail, payload[offset:]) {
		fail(fmt.Errorf("resumed download differs"))
	}
	fmt.Println("resume ok")
}
