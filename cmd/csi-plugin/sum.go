package main

import (
	"context"
	"fmt"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/modelcast/modelcast/pkg/agent"
)

const sumUsage = `usage: csi-plugin sum [flags] DIR

Prints the CRC-64/ECMA (as OSS reports it in x-oss-hash-crc64ecma), the size and the path of
every regular file under DIR, one per line, sorted by path: compare a mounted model with
its objects in OSS. A path that holds a character that is not plainly printable (control
characters, bidirectional formatting, invisible or non-ASCII spaces, invalid UTF-8) or that
starts with a double quote is printed quoted and escaped, as a Go string literal.
`

// runSum prints "crc64 size path" for every file under a directory.
func runSum(ctx context.Context, args []string) error {
	fset := toolFlagSet("sum", sumUsage)
	if err := parseArgs(fset, args, "DIR"); err != nil {
		return err
	}
	root := fset.Arg(0)
	buf := make([]byte, 4<<20)
	// WalkDir visits in lexical order.
	return filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		crc, n, err := agent.FileCRC(path, buf)
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return err
		}
		_, err = fmt.Printf("%s %d %s\n", strconv.FormatUint(crc, 10), n, displayPath(filepath.ToSlash(rel)))
		return err
	})
}

// displayPath is p as sum prints it: unchanged when every character is plainly printable
// (strconv.IsPrint: letters, marks, numbers, punctuation, symbols, the ASCII space), else
// quoted with strconv.Quote, so that a name cannot break a line, move the cursor or show
// as another name (a bidirectional override, a C1 control). A quoted path starts with '"',
// so a path that does is quoted too: the two never read alike.
func displayPath(p string) string {
	if strings.HasPrefix(p, `"`) || !utf8.ValidString(p) || strings.ContainsFunc(p, func(r rune) bool { return !strconv.IsPrint(r) }) {
		return strconv.Quote(p)
	}
	return p
}
