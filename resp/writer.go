package resp

import "strconv"

// The Append functions encode replies and commands onto b, so a connection
// can build a whole response in one reused buffer and write it once. They
// allocate only when b must grow.

// AppendSimple encodes a simple string: +s.
func AppendSimple(b []byte, s string) []byte {
	return appendLine(b, '+', s)
}

// AppendError encodes an error reply; s starts with its code, as in
// "ERR unknown command".
func AppendError(b []byte, s string) []byte {
	return appendLine(b, '-', s)
}

// appendLine writes a one-line reply. A CR or LF inside s would end the
// reply early and desynchronize the peer, so, like Redis, they become
// spaces; messages often quote peer input.
func appendLine(b []byte, kind byte, s string) []byte {
	b = append(b, kind)
	start := len(b)
	b = append(b, s...)
	for i := start; i < len(b); i++ {
		if b[i] == '\r' || b[i] == '\n' {
			b[i] = ' '
		}
	}
	return append(b, '\r', '\n')
}

// AppendInt encodes an integer reply.
func AppendInt(b []byte, n int64) []byte {
	b = append(b, ':')
	b = strconv.AppendInt(b, n, 10)
	return append(b, '\r', '\n')
}

// AppendBulk encodes a bulk string.
func AppendBulk(b []byte, p []byte) []byte {
	b = appendBulkHeader(b, len(p))
	b = append(b, p...)
	return append(b, '\r', '\n')
}

// AppendBulkString encodes a bulk string from a string.
func AppendBulkString(b []byte, s string) []byte {
	b = appendBulkHeader(b, len(s))
	b = append(b, s...)
	return append(b, '\r', '\n')
}

func appendBulkHeader(b []byte, n int) []byte {
	b = append(b, '$')
	b = strconv.AppendInt(b, int64(n), 10)
	return append(b, '\r', '\n')
}

// AppendNullBulk encodes the nil bulk string.
func AppendNullBulk(b []byte) []byte { return append(b, "$-1\r\n"...) }

// AppendArrayHeader starts an array of n elements.
func AppendArrayHeader(b []byte, n int) []byte {
	b = append(b, '*')
	b = strconv.AppendInt(b, int64(n), 10)
	return append(b, '\r', '\n')
}

// AppendCommand encodes a command as a multibulk of bulk strings, the form
// every Redis server accepts.
func AppendCommand(b []byte, args ...string) []byte {
	b = AppendArrayHeader(b, len(args))
	for _, a := range args {
		b = AppendBulkString(b, a)
	}
	return b
}
