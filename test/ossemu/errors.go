package ossemu

import (
	"bytes"
	"encoding/xml"
	"net/http"
	"strconv"
)

// ossError is an error answered in OSS's XML shape.
type ossError struct {
	status  int
	code    string
	message string
	// extra elements after Message (e.g. Key, StringToSign), in order.
	extra []xmlField
}

type xmlField struct{ name, value string }

func (e *ossError) Error() string { return e.code + ": " + e.message }

func (e *ossError) with(name, value string) *ossError {
	e.extra = append(e.extra, xmlField{name, value})
	return e
}

func newError(status int, code, message string) *ossError {
	return &ossError{status: status, code: code, message: message}
}

func errNoSuchBucket(bucket string) *ossError {
	return newError(http.StatusNotFound, "NoSuchBucket", "The specified bucket does not exist.").with("BucketName", bucket)
}

func errNoSuchKey(key string) *ossError {
	return newError(http.StatusNotFound, "NoSuchKey", "The specified key does not exist.").with("Key", key)
}

func errAccessDenied(message string) *ossError {
	return newError(http.StatusForbidden, "AccessDenied", message)
}

func errInvalidArgument(message string) *ossError {
	return newError(http.StatusBadRequest, "InvalidArgument", message)
}

func errSignature(message string) *ossError {
	return newError(http.StatusForbidden, "SignatureDoesNotMatch", message)
}

func errMethodNotAllowed(message string) *ossError {
	return newError(http.StatusMethodNotAllowed, "MethodNotAllowed", message)
}

func errInternal(message string) *ossError {
	return newError(http.StatusInternalServerError, "InternalError", message)
}

// errorForStatus is the error an injected FaultStatus answers.
func errorForStatus(status int) *ossError {
	var code string
	switch status {
	case http.StatusBadRequest:
		code = "InvalidArgument"
	case http.StatusForbidden:
		code = "AccessDenied"
	case http.StatusNotFound:
		code = "NoSuchKey"
	case http.StatusPreconditionFailed:
		code = "PreconditionFailed"
	case http.StatusRequestedRangeNotSatisfiable:
		code = "InvalidRange"
	case http.StatusTooManyRequests:
		code = "TooManyRequests"
	case http.StatusNotImplemented:
		code = "NotImplemented"
	case http.StatusServiceUnavailable:
		code = "ServiceUnavailable"
	default:
		code = "InternalError"
		if status < 500 {
			code = "InvalidRequest"
		}
	}
	return newError(status, code, "Injected fault: "+strconv.Itoa(status)+" "+http.StatusText(status)+".")
}

// errorCondition is the EC value sent in x-oss-ec and <EC>. The values
// imitate OSS's format; the numbers are the emulator's own.
func errorCondition(code string) string {
	switch code {
	case "NoSuchBucket":
		return "0015-00000101"
	case "NoSuchKey":
		return "0026-00000001"
	case "AccessDenied":
		return "0003-00000001"
	case "SignatureDoesNotMatch":
		return "0002-00000040"
	case "InvalidAccessKeyId":
		return "0002-00000902"
	case "InvalidSecurityToken":
		return "0002-00000903"
	case "RequestTimeTooSkewed":
		return "0002-00000504"
	case "PreconditionFailed":
		return "0026-00000008"
	case "InvalidRange":
		return "0026-00000002"
	case "InvalidArgument":
		return "0017-00000001"
	case "InvalidDigest":
		return "0016-00000004"
	case "MethodNotAllowed":
		return "0001-00000405"
	}
	return "0000-00000000"
}

// body renders the error document.
func (e *ossError) body(requestID, hostID string) []byte {
	var b bytes.Buffer
	b.WriteString(`<?xml version="1.0" encoding="UTF-8"?>` + "\n<Error>\n")
	field := func(name, value string) {
		b.WriteString("  <" + name + ">")
		_ = xml.EscapeText(&b, []byte(value))
		b.WriteString("</" + name + ">\n")
	}
	field("Code", e.code)
	field("Message", e.message)
	field("RequestId", requestID)
	field("HostId", hostID)
	for _, f := range e.extra {
		field(f.name, f.value)
	}
	field("EC", errorCondition(e.code))
	b.WriteString("</Error>\n")
	return b.Bytes()
}
